//! libinjection's SQL-injection and XSS detectors (ModSecurity's `@detectSQLi` and
//! `@detectXSS`), the one host function a policy module may import.
//!
//! The node answers the module's `edgepack.detect` import with [`detect`], and the
//! compiler's reference evaluator calls the same function, so the two agree by construction.
//! The detectors are a pure-Rust port of libinjection (`libinjectionrs`), built from a
//! copy whose keyword lookup does not allocate (`third_party/README.md`).

/// What to look for: the `kind` argument of the `detect` import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DetectKind {
    /// libinjection's SQL-injection fingerprinting (`@detectSQLi`).
    Sqli,
    /// libinjection's HTML5 XSS tokenizer (`@detectXSS`).
    Xss,
}

impl DetectKind {
    /// The `kind` value passed to the import.
    pub fn code(self) -> u32 {
        match self {
            DetectKind::Sqli => 0,
            DetectKind::Xss => 1,
        }
    }

    pub fn from_code(code: u32) -> Option<DetectKind> {
        match code {
            0 => Some(DetectKind::Sqli),
            1 => Some(DetectKind::Xss),
            _ => None,
        }
    }
}

/// Whether libinjection finds `kind` in `value`. A request must never take the node down:
/// should the detector panic on some input, that input counts as an attack (a WAF that
/// fails open on a crafted value is one an attacker can walk through).
pub fn detect(kind: DetectKind, value: &[u8]) -> bool {
    if kind == DetectKind::Xss && !may_hold_xss(value) {
        return false;
    }
    std::panic::catch_unwind(|| match kind {
        DetectKind::Sqli => is_sqli(value),
        DetectKind::Xss => libinjectionrs::detect_xss(value).is_injection(),
    })
    .unwrap_or(true)
}

/// libinjection's SQL-injection answer. `detect_sqli` gives the same answer and then
/// fingerprints the value once more for its report, which took a kilobyte of plain text
/// from 3.6 to 8.8 µs: the state is asked directly.
fn is_sqli(value: &[u8]) -> bool {
    libinjectionrs::SqliState::new(value, libinjectionrs::SqliFlags::FLAG_NONE).detect()
}

/// Whether libinjection's XSS detector could find anything in `value`. It reports a value
/// for a tag, doctype or comment, each opened by `<`, or for an attribute value after a
/// dangerous attribute name, which needs `=` between them (in every one of the five HTML
/// contexts it tries, a value's own first part is never preceded by a name). Ordinary
/// text has neither, and the tokenizer's walk over it (each word taken as an attribute name
/// and looked up) is the costliest part of a request's WAF time: this test is a `memchr2`.
fn may_hold_xss(value: &[u8]) -> bool {
    memchr::memchr2(b'<', b'=', value).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_libinjection_finds() {
        assert!(detect(DetectKind::Sqli, b"1' OR '1'='1' --"));
        assert!(detect(
            DetectKind::Sqli,
            b"1 union select password from users"
        ));
        assert!(!detect(DetectKind::Sqli, b"hello world"));
        assert!(detect(DetectKind::Xss, b"<script>alert(1)</script>"));
        assert!(detect(DetectKind::Xss, b"<img src=x onerror=alert(1)>"));
        assert!(!detect(DetectKind::Xss, b"a < b and c > d"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_libinjections_answer(value: Vec<u8>) {
            proptest::prop_assert_eq!(
                detect(DetectKind::Sqli, &value),
                libinjectionrs::detect_sqli(&value).is_injection()
            );
            let _ = detect(DetectKind::Xss, &value);
        }

        /// The XSS shortcut against the detector itself: bytes without `<` or `=`, drawn
        /// mostly from what its tokenizer reacts to (quotes, `>`, `/`, `!`, `?`, `%`,
        /// whitespace, NUL, 0xFF) and from dangerous names, never make it report.
        #[test]
        fn libinjection_finds_no_xss_without_a_tag_or_an_attribute_value(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"\""[..], b"'", b"`", b">", b"/", b"!", b"?", b"%", b" ", b"\t",
                    b"\n", b"\x00", b"\xff", b"-", b"[", b"onerror", b"style", b"src",
                    b"xlink:href", b"javascript:alert(1)", b"DOCTYPE", b"[CDATA[", b"script",
                    b"x", b"1",
                ]),
                0..24,
            )
        ) {
            let value: Vec<u8> = pieces.concat();
            proptest::prop_assert!(!may_hold_xss(&value));
            proptest::prop_assert!(
                !libinjectionrs::detect_xss(&value).is_injection(),
                "{:?}",
                String::from_utf8_lossy(&value)
            );
        }
    }

    /// Every XSS libinjection finds in the corpora (each line as written and percent-decoded)
    /// holds `<` or `=`, so the shortcut loses none of them; and the SQL-injection answer
    /// asked of libinjection's state is its `detect_sqli`'s on every line.
    #[test]
    fn shortcuts_keep_every_detection_in_the_corpora() {
        let mut detected = 0;
        for path in corpus_files() {
            let text = std::fs::read(&path).expect("a corpus file");
            for line in text.split(|b| *b == b'\n') {
                for value in [line.to_vec(), percent_decoded(line)] {
                    assert_eq!(
                        is_sqli(&value),
                        libinjectionrs::detect_sqli(&value).is_injection(),
                        "{}: {:?}",
                        path.display(),
                        String::from_utf8_lossy(&value)
                    );
                    if libinjectionrs::detect_xss(&value).is_injection() {
                        detected += 1;
                        assert!(
                            may_hold_xss(&value),
                            "{}: {:?}",
                            path.display(),
                            String::from_utf8_lossy(&value)
                        );
                    }
                }
            }
        }
        assert!(detected > 100, "{detected} detections: the corpus was read");
    }

    /// Every file of the public corpora in `../shared/data/waf-dev`, in a stable order.
    fn corpus_files() -> Vec<std::path::PathBuf> {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/waf-dev");
        let mut paths = Vec::new();
        files(&root, &mut paths);
        paths.sort();
        paths
    }

    /// Every file under `dir`, into `out`.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// `line` with `%XX` escapes decoded and `+` as a space.
    fn percent_decoded(line: &[u8]) -> Vec<u8> {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::with_capacity(line.len());
        let mut i = 0;
        while i < line.len() {
            match (
                line[i],
                line.get(i + 1).copied().and_then(hex),
                line.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                (b'+', ..) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, ..) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// The patched libinjection (`third_party/libinjectionrs`) answers as the published crate
    /// does: the digest of its answers and fingerprints on every corpus line (as written, `+`
    /// as space, percent-decoded), every keyword of its table (as written, lower-cased, and
    /// merged with another), and 200,000 seeded strings of keywords and SQL punctuation is
    /// the one the published 0.1.1 gives on the same inputs.
    #[test]
    fn patched_libinjection_answers_as_the_published_crate() {
        use sha2::Digest;
        let keywords: Vec<&str> = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS
            .iter()
            .map(|k| k.word)
            .collect();
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for path in corpus_files() {
            let text = std::fs::read(&path).expect("a corpus file");
            for line in text.split(|b| *b == b'\n') {
                let spaced: Vec<u8> = line
                    .iter()
                    .map(|&b| if b == b'+' { b' ' } else { b })
                    .collect();
                inputs.extend([line.to_vec(), spaced, percent_decoded(line)]);
            }
        }
        for (i, word) in keywords.iter().enumerate() {
            let other = keywords[i * 7919 % keywords.len()];
            inputs.push(word.as_bytes().to_vec());
            inputs.push(word.to_ascii_lowercase().into_bytes());
            inputs.push(format!("{word} {}", other.to_ascii_lowercase()).into_bytes());
        }
        let punctuation = [
            " ", "'", "\"", "(", ")", "--", "/*", "*/", "#", ";", ",", "1", "=", " or ", "`", ".",
            "@", "\\", "\u{e9}", "\u{ff}",
        ];
        let mut seed: u64 = 12345;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for _ in 0..200_000 {
            let mut value = String::new();
            for _ in 0..1 + next(7) {
                if next(2) == 0 {
                    value.push_str(keywords[next(keywords.len())]);
                } else {
                    value.push_str(punctuation[next(punctuation.len())]);
                }
                if next(3) == 0 {
                    value.push(' ');
                }
            }
            inputs.push(value.into_bytes());
        }
        let mut digest = sha2::Sha256::new();
        let mut found = 0;
        for input in &inputs {
            let answer = libinjectionrs::detect_sqli(input);
            found += usize::from(answer.is_injection());
            let fingerprint = answer.fingerprint.as_ref().map_or("", |f| f.as_str());
            digest.update(format!(
                "{} {fingerprint}\n",
                u8::from(answer.is_injection())
            ));
        }
        let digest: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        eprintln!(
            "{} inputs, {found} SQL injections, digest {digest}",
            inputs.len()
        );
        assert!(found > 1000, "{found} detections: the inputs were built");
        assert_eq!(digest, PUBLISHED_ANSWERS);
    }

    /// The digest the published libinjectionrs 0.1.1 gives in the test above.
    const PUBLISHED_ANSWERS: &str =
        "b11b05712d7dd042842cdcca2c4e47b0d8fb2e3b18653c32cec1ad2bc164e0b7";
}
