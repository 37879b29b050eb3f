//! The opener against every way a bundle can be wrong: each refusal class has its test.

use super::*;
use proptest::prelude::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        (
            "keys/auth.pem".to_string(),
            b"-----BEGIN PUBLIC KEY-----\n".to_vec(),
        ),
        ("plan.json".to_string(), br#"{"region":"eu-west"}"#.to_vec()),
        ("policy.wasm".to_string(), b"\0asm\x01\0\0\0".to_vec()),
    ])
}

fn input() -> PackInput<'static> {
    PackInput {
        region: "eu-west",
        zone: "EU",
        version: 7,
        created: 1_700_000_000,
        expires: None,
        compiler: "edgepack test",
        sources_sha256: "00",
    }
}

fn good() -> Vec<u8> {
    pack(&input(), &files(), &key(1)).unwrap()
}

fn trusted() -> Vec<VerifyingKey> {
    vec![key(1).verifying_key()]
}

fn open_default(bytes: &[u8]) -> Result<Bundle, OpenError> {
    open(bytes, &trusted(), &OpenLimits::default())
}

/// A bundle around a hand-made tar, with a manifest listing `listed`, signed by key 1.
fn crafted(tar: &[u8], listed: Vec<FileEntry>, abi: u32) -> Vec<u8> {
    let tar_frame = zstd::stream::encode_all(tar, 3).unwrap();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        region: "eu-west".into(),
        zone: "EU".into(),
        version: 1,
        created: 0,
        expires: None,
        abi,
        compiler: "test".into(),
        sources_sha256: "00".into(),
        tar_sha256: sha256_hex(&tar_frame),
        files: listed,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let signature = sign(&key(1), &manifest_bytes, &tar_frame);
    assemble(&manifest_bytes, &[signature], &tar_frame)
}

fn entry(path: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        path: path.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

/// A ustar header block for `path` with `kind`, followed by `data`.
fn tar_entry(path: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    // Write the raw name bytes so unsafe paths get through the builder's own checks.
    let name = &mut header.as_ustar_mut().unwrap().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn a_good_bundle_opens_and_is_reproducible() {
    let bytes = good();
    assert_eq!(bytes, good(), "the same input gives the same bytes");
    let bundle = open_default(&bytes).unwrap();
    assert_eq!(bundle.files, files());
    assert_eq!(bundle.manifest.version, 7);
    assert_eq!(bundle.signed_by, vec![key_id(&key(1).verifying_key())]);
    // A valid .tar.zst: the zstd decoder skips the header frame.
    let tar = zstd::stream::decode_all(bytes.as_slice()).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["keys/auth.pem", "plan.json", "policy.wasm"]);
}

#[test]
fn truncated_bundles_are_refused() {
    let bytes = good();
    for cut in [0, 3, 7, 20, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = open_default(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, OpenError::Truncated(_)),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn any_flipped_byte_is_refused() {
    let bytes = good();
    for at in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        assert!(
            open_default(&tampered).is_err(),
            "flipping byte {at} went unnoticed"
        );
    }
}

#[test]
fn a_refusal_names_what_was_altered() {
    let bytes = good();
    let raw = split(&bytes, &OpenLimits::default()).unwrap();
    let signer = key_id(&key(1).verifying_key());
    let manifest_at = 24 + raw.manifest_bytes.len() / 2;
    let mut manifest = bytes.clone();
    manifest[manifest_at] ^= 0x01;
    assert_eq!(
        open_default(&manifest).unwrap_err(),
        OpenError::ManifestAltered(signer.clone())
    );
    let mut payload = bytes.clone();
    let in_payload = bytes.len() - raw.tar_frame.len() / 2;
    payload[in_payload] ^= 0x01;
    assert_eq!(
        open_default(&payload).unwrap_err(),
        OpenError::PayloadAltered(signer.clone())
    );
    let mut entry = raw.signatures[0].clone();
    let digit = if entry.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    entry.signature.replace_range(0..1, digit);
    let forged = assemble(raw.manifest_bytes, &[entry], raw.tar_frame);
    assert_eq!(
        open_default(&forged).unwrap_err(),
        OpenError::BadSignature(signer)
    );
}

#[test]
fn signatures_stripped_unknown_or_untrusted_are_refused() {
    let bytes = good();
    let raw = split(&bytes, &OpenLimits::default()).unwrap();
    let stripped = assemble(raw.manifest_bytes, &[], raw.tar_frame);
    assert_eq!(open_default(&stripped).unwrap_err(), OpenError::Unsigned);
    let mut bogus = raw.signatures[0].clone();
    bogus.key_id = "not-a-key-id".into();
    let unknown = assemble(raw.manifest_bytes, &[bogus], raw.tar_frame);
    assert!(matches!(
        open_default(&unknown),
        Err(OpenError::UnknownKeyId(_))
    ));
    let other = open(&bytes, &[key(2).verifying_key()], &OpenLimits::default()).unwrap_err();
    assert!(matches!(other, OpenError::Untrusted(ids) if ids == [key_id(&key(1).verifying_key())]));
}

#[test]
fn a_second_signature_can_be_added_without_touching_the_payload() {
    let bytes = good();
    let signed = add_signature(&bytes, &key(2)).unwrap();
    assert_eq!(&signed[signed.len() - 100..], &bytes[bytes.len() - 100..]);
    let bundle = open(&signed, &[key(2).verifying_key()], &OpenLimits::default()).unwrap();
    assert_eq!(bundle.signed_by, vec![key_id(&key(2).verifying_key())]);
    assert_eq!(open_default(&signed).unwrap().files, files());
}

#[test]
fn manifest_and_archive_must_agree() {
    let a = b"first".as_slice();
    let b = b"second".as_slice();
    let tar = tar_of(&[
        tar_entry("a", tar::EntryType::Regular, a),
        tar_entry("b", tar::EntryType::Regular, b),
    ]);
    let ok = crafted(
        &tar,
        vec![entry("a", a), entry("b", b)],
        crate::abi::ABI_VERSION,
    );
    assert_eq!(open_default(&ok).unwrap().files.len(), 2);
    let cases: Vec<(Vec<u8>, OpenError)> = vec![
        (
            crafted(&tar, vec![entry("a", a)], crate::abi::ABI_VERSION),
            OpenError::Unlisted("b".into()),
        ),
        (
            crafted(
                &tar,
                vec![entry("a", a), entry("b", b), entry("c", b)],
                crate::abi::ABI_VERSION,
            ),
            OpenError::Missing("c".into()),
        ),
        (
            crafted(
                &tar,
                vec![entry("a", a), entry("b", b"other")],
                crate::abi::ABI_VERSION,
            ),
            OpenError::SizeMismatch {
                path: "b".into(),
                expected: 5,
                actual: 6,
            },
        ),
        (
            crafted(
                &tar,
                vec![entry("a", a), entry("b", b"sekond")],
                crate::abi::ABI_VERSION,
            ),
            OpenError::HashMismatch("b".into()),
        ),
        (
            crafted(
                &tar_of(&[
                    tar_entry("a", tar::EntryType::Regular, a),
                    tar_entry("a", tar::EntryType::Regular, a),
                ]),
                vec![entry("a", a)],
                crate::abi::ABI_VERSION,
            ),
            OpenError::Duplicate("a".into()),
        ),
        (
            crafted(
                &tar_of(&[
                    tar_entry("b", tar::EntryType::Regular, b),
                    tar_entry("a", tar::EntryType::Regular, a),
                ]),
                vec![entry("a", a), entry("b", b)],
                crate::abi::ABI_VERSION,
            ),
            OpenError::Unsorted("a".into()),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(open_default(&bytes).unwrap_err(), expected);
    }
}

#[test]
fn unsafe_entries_are_refused() {
    let data = b"x".as_slice();
    for path in ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a"] {
        let bytes = crafted(
            &tar_of(&[tar_entry(path, tar::EntryType::Regular, data)]),
            vec![entry(path, data)],
            crate::abi::ABI_VERSION,
        );
        assert_eq!(
            open_default(&bytes).unwrap_err(),
            OpenError::UnsafePath(path.into()),
            "{path}"
        );
    }
    for kind in [
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Directory,
        tar::EntryType::Fifo,
    ] {
        let bytes = crafted(
            &tar_of(&[tar_entry("a", kind, b"")]),
            vec![entry("a", b"")],
            crate::abi::ABI_VERSION,
        );
        assert!(
            matches!(open_default(&bytes), Err(OpenError::NotAFile { .. })),
            "{kind:?}"
        );
    }
    for kind in [
        tar::EntryType::XHeader,
        tar::EntryType::GNULongName,
        tar::EntryType::XGlobalHeader,
    ] {
        let bytes = crafted(
            &tar_of(&[
                tar_entry("ext", kind, b"30 path=a\n"),
                tar_entry("a", tar::EntryType::Regular, data),
            ]),
            vec![entry("a", data)],
            crate::abi::ABI_VERSION,
        );
        let result = open_default(&bytes);
        assert!(
            matches!(result, Err(OpenError::ExtensionHeader(_))),
            "{kind:?}: {result:?}"
        );
    }
}

#[test]
fn decompression_bombs_are_refused() {
    // One listed byte, but the frame holds 64 MiB of zeros.
    let huge = vec![0u8; 64 << 20];
    let bytes = crafted(&huge, vec![entry("a", b"x")], crate::abi::ABI_VERSION);
    assert!(matches!(
        open_default(&bytes),
        Err(OpenError::TooLarge { .. })
    ));
}

#[test]
fn unknown_versions_and_trailing_data_are_refused() {
    let bytes = crafted(&tar_of(&[]), vec![], 99);
    assert_eq!(
        open_default(&bytes).unwrap_err(),
        OpenError::UnknownAbi {
            found: 99,
            expected: crate::abi::ABI_VERSION
        }
    );
    let mut other_format = good();
    other_format[16] = 2;
    assert_eq!(
        open_default(&other_format).unwrap_err(),
        OpenError::UnknownFormat(2)
    );
    let mut trailing = good();
    trailing.extend_from_slice(b"junk");
    assert_eq!(
        open_default(&trailing).unwrap_err(),
        OpenError::TrailingData
    );
    // Trailing data the signer covered is still refused, after the signature checks out.
    let tar = tar_of(&[]);
    let mut frame = zstd::stream::encode_all(tar.as_slice(), 3).unwrap();
    frame.extend_from_slice(b"junk");
    let manifest = Manifest {
        format: FORMAT_VERSION,
        region: "r".into(),
        zone: "Z".into(),
        version: 1,
        created: 0,
        expires: None,
        abi: crate::abi::ABI_VERSION,
        compiler: "t".into(),
        sources_sha256: "0".into(),
        tar_sha256: sha256_hex(&frame),
        files: vec![],
    };
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let signed = assemble(
        &manifest_bytes,
        &[sign(&key(1), &manifest_bytes, &frame)],
        &frame,
    );
    assert_eq!(open_default(&signed).unwrap_err(), OpenError::TrailingData);
    assert_eq!(
        open_default(b"not a bundle at all").unwrap_err(),
        OpenError::NotABundle
    );
}

#[test]
fn key_files_round_trip_and_refuse_garbage() {
    let k = key(3);
    let secret = keys::secret_key_text(&k);
    let public = keys::public_key_text(&k.verifying_key());
    assert_eq!(
        keys::parse_secret_key(&secret).unwrap().to_bytes(),
        k.to_bytes()
    );
    assert_eq!(keys::parse_public_key(&public).unwrap(), k.verifying_key());
    assert_eq!(
        keys::parse_public_key(&secret).unwrap_err(),
        keys::KeyError::SecretWherePublic,
        "a swapped key file is named as such"
    );
    assert_eq!(
        keys::parse_secret_key(&public).unwrap_err(),
        keys::KeyError::PublicWhereSecret
    );
    assert_eq!(
        keys::parse_public_key("ssh-ed25519 AAAA").unwrap_err(),
        keys::KeyError::Format("public")
    );
    let forged = public.replacen(&key_id(&k.verifying_key()), "0000000000000000", 1);
    assert_eq!(
        keys::parse_public_key(&forged).unwrap_err(),
        keys::KeyError::KeyIdMismatch
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes and damaged bundles never panic the opener, and never open.
    #[test]
    fn the_opener_never_panics(noise in proptest::collection::vec(any::<u8>(), 0..2048), at in any::<usize>(), cut in any::<usize>(), flip in 1u8..) {
        prop_assert!(open_default(&noise).is_err());
        let mut damaged = good();
        let n = damaged.len();
        damaged[at % n] ^= flip;
        prop_assert!(open_default(&damaged).is_err());
        let mut spliced = good();
        let at = at % n;
        spliced.splice(at..at, noise.iter().copied());
        let _ = open_default(&spliced[..cut % (spliced.len() + 1)]);
        let _ = open_unverified(&spliced, &OpenLimits::default());
    }
}

#[test]
fn a_signature_written_another_way_does_not_open() {
    // Hex is case-insensitive to most decoders; a bundle whose signature list was
    // re-cased has other bytes and must not open as if it were the signed one.
    let bytes = good();
    let raw = split(&bytes, &OpenLimits::default()).expect("splits");
    let mut signatures = raw.signatures.clone();
    signatures[0].signature = signatures[0].signature.to_uppercase();
    let recased = assemble(raw.manifest_bytes, &signatures, raw.tar_frame);
    assert_ne!(recased, bytes);
    assert!(open_default(&recased).is_err());
    let mut signatures = raw.signatures.clone();
    signatures[0].key_id = signatures[0].key_id.to_uppercase();
    let recased = assemble(raw.manifest_bytes, &signatures, raw.tar_frame);
    assert!(open_default(&recased).is_err());
}
