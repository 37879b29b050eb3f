//! libinjection's SQL-injection and XSS detectors (ModSecurity's `@detectSQLi` and
//! `@detectXSS`), the one host function a policy module may import.
//!
//! The node answers the module's `edgepack.detect` import with [`detect`], and the
//! compiler's reference evaluator calls the same function, so the two agree by construction.
//! The detectors are a pure-Rust port of libinjection (`libinjectionrs`).

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
    std::panic::catch_unwind(|| match kind {
        DetectKind::Sqli => libinjectionrs::detect_sqli(value).is_injection(),
        DetectKind::Xss => libinjectionrs::detect_xss(value).is_injection(),
    })
    .unwrap_or(true)
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
        fn any_bytes_give_an_answer(value: Vec<u8>) {
            let _ = detect(DetectKind::Sqli, &value);
            let _ = detect(DetectKind::Xss, &value);
        }
    }
}
