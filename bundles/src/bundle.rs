//! The bundle: one region's signed, compressed policy, and the only code that writes or
//! opens one.
//!
//! A bundle is a valid `.tar.zst` file: a zstd *skippable* frame holding the magic tag, the
//! canonical manifest and the signatures, followed by exactly one zstd frame holding a
//! deterministic tar of the region's files. [`open`] verifies the signatures before it
//! decompresses or parses anything, bounds every size, and refuses anything the manifest
//! does not account for. The layout is documented in docs/bundle-format.md.

use std::collections::BTreeMap;
use std::io::Read;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the bundle format (the skippable frame, manifest and tar layout).
pub const FORMAT_VERSION: u32 = 1;
/// Magic number of a zstd skippable frame (the first of the 16 allowed).
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// The tag at the start of the skippable frame's content.
pub const TAG: &[u8; 8] = b"EDGEPACK";
/// Domain separation for signatures.
pub const SIGNATURE_DOMAIN: &[u8] = b"edgepack-bundle-v1\0";
/// zstd level of the tar frame (fixed, so the same input gives the same bytes).
pub const COMPRESSION_LEVEL: i32 = 19;

/// Hard limits on what `open` accepts.
#[derive(Clone, Copy, Debug)]
pub struct OpenLimits {
    pub max_bundle_bytes: u64,
    pub max_header_bytes: u32,
    pub max_signatures: usize,
    pub max_files: usize,
    pub max_unpacked_bytes: u64,
}

impl Default for OpenLimits {
    fn default() -> OpenLimits {
        OpenLimits {
            max_bundle_bytes: 256 << 20,
            max_header_bytes: 4 << 20,
            max_signatures: 16,
            max_files: 4096,
            max_unpacked_bytes: 512 << 20,
        }
    }
}

/// What a bundle says about itself; signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub region: String,
    pub zone: String,
    /// Monotonic bundle version: nodes refuse anything not above what they run.
    pub version: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: never.
    pub expires: Option<u64>,
    pub abi: u32,
    pub compiler: String,
    /// sha256 of the policy's sources (every file, by path).
    pub sources_sha256: String,
    /// sha256 of the compressed tar frame, as it sits in the bundle.
    pub tar_sha256: String,
    /// Every file in the tar, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One signature: the signer's key id, the sha256 of the manifest it signed, and the
/// ed25519 signature, hex.
///
/// `manifest_sha256` sits beside the signed message, not inside it: it must equal the
/// manifest's hash for the bundle to open. When a signature does not verify it tells what was altered — the
/// manifest (it no longer has that hash), the payload (the manifest's tar hash no longer
/// matches) or else the signature itself — so the refusal can say which.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    pub manifest_sha256: String,
    pub signature: String,
}

/// Why a bundle was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the bundle: {0}")]
    Io(String),
    #[error("the bundle is truncated: it ends inside its {0}")]
    Truncated(&'static str),
    #[error("not an edgepack bundle (no edgepack header frame)")]
    NotABundle,
    #[error("unknown bundle format version {0} (this edgepack reads version {FORMAT_VERSION})")]
    UnknownFormat(u32),
    #[error("the bundle's {what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("the bundle is not signed")]
    Unsigned,
    #[error("the bundle has more than {0} signatures")]
    TooManySignatures(usize),
    #[error("malformed signature list: {0}")]
    SignatureList(String),
    #[error("signature by key {0}, which is not a valid key id")]
    UnknownKeyId(String),
    #[error("signed only by keys that are not trusted: {}", .0.join(", "))]
    Untrusted(Vec<String>),
    #[error(
        "the signature by trusted key {0} does not verify: the signature was altered or forged"
    )]
    BadSignature(String),
    #[error("the manifest was altered after key {0} signed it")]
    ManifestAltered(String),
    #[error(
        "the payload was altered after key {0} signed it: the tar frame no longer has the manifest's hash"
    )]
    PayloadAltered(String),
    #[error("malformed manifest: {0}")]
    Manifest(String),
    #[error("the manifest's tar hash does not match the tar frame")]
    TarHashMismatch,
    #[error("the policy speaks ABI {found}; this build speaks ABI {expected}")]
    UnknownAbi { found: u32, expected: u32 },
    #[error("the tar frame is not one zstd frame: {0}")]
    Compression(String),
    #[error("unexpected bytes after the tar frame")]
    TrailingData,
    #[error("malformed tar archive: {0}")]
    Archive(String),
    #[error("`{path}` in the archive is a {kind}, not a regular file")]
    NotAFile { path: String, kind: String },
    #[error("the archive uses an extension header ({0}); bundles never do")]
    ExtensionHeader(String),
    #[error("unsafe path in the archive: `{0}`")]
    UnsafePath(String),
    #[error("`{0}` appears twice in the archive")]
    Duplicate(String),
    #[error("the archive's files are not in order at `{0}`")]
    Unsorted(String),
    #[error("`{0}` is in the archive but not in the manifest")]
    Unlisted(String),
    #[error("`{0}` is in the manifest but not in the archive")]
    Missing(String),
    #[error("`{path}` is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("`{0}` does not match its hash in the manifest")]
    HashMismatch(String),
}

/// An opened, verified bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The files, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Key ids of the trusted keys whose signatures verified.
    pub signed_by: Vec<String>,
    /// sha256 of the whole bundle file.
    pub sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The sha256 of the file at `path` with contents `bytes`: the one `entries` (an opened
/// bundle's manifest, every file of which the opener checked) lists, else computed.
pub fn listed_sha256(entries: &[FileEntry], path: &str, bytes: &[u8]) -> String {
    entries
        .iter()
        .find(|entry| entry.path == path)
        .map_or_else(|| sha256_hex(bytes), |entry| entry.sha256.clone())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes lowercase hex, the only form `hex` writes: accepting upper case (or the `+`
/// that `from_str_radix` allows) would let the same signature be written several ways, so a
/// bundle whose bytes changed would still open.
fn unhex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The id of a public key: the first 8 bytes of its sha256, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// The message a signature covers: the domain, the manifest's hash, the tar frame's hash.
fn signed_message(manifest: &[u8], tar_frame_sha256: &[u8]) -> Vec<u8> {
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(manifest));
    message.extend_from_slice(tar_frame_sha256);
    message
}

/// A bundle split into its parts, not yet verified.
pub struct RawBundle<'a> {
    pub manifest_bytes: &'a [u8],
    pub signatures: Vec<SignatureEntry>,
    pub tar_frame: &'a [u8],
}

fn read_u32(bytes: &[u8], at: usize, what: &'static str) -> Result<u32, OpenError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(OpenError::Truncated(what))
}

/// Splits a bundle into header parts and tar frame, checking only the layout.
pub fn split<'a>(bytes: &'a [u8], limits: &OpenLimits) -> Result<RawBundle<'a>, OpenError> {
    if bytes.len() as u64 > limits.max_bundle_bytes {
        return Err(OpenError::TooLarge {
            what: "file",
            limit: limits.max_bundle_bytes,
        });
    }
    if bytes.len() < 8 {
        return Err(
            if bytes.len() >= 4 && read_u32(bytes, 0, "header")? != SKIPPABLE_MAGIC {
                OpenError::NotABundle
            } else {
                OpenError::Truncated("header frame")
            },
        );
    }
    if read_u32(bytes, 0, "header frame")? != SKIPPABLE_MAGIC {
        return Err(OpenError::NotABundle);
    }
    let content_len = read_u32(bytes, 4, "header frame")?;
    if content_len > limits.max_header_bytes {
        return Err(OpenError::TooLarge {
            what: "header frame",
            limit: u64::from(limits.max_header_bytes),
        });
    }
    let content = bytes
        .get(8..8 + content_len as usize)
        .ok_or(OpenError::Truncated("header frame"))?;
    if content.len() < 8 || &content[..8] != TAG {
        return Err(if content.len() < 8 {
            OpenError::Truncated("header frame")
        } else {
            OpenError::NotABundle
        });
    }
    let format = read_u32(content, 8, "header frame")?;
    if format != FORMAT_VERSION {
        return Err(OpenError::UnknownFormat(format));
    }
    let manifest_len = read_u32(content, 12, "header frame")? as usize;
    let manifest_bytes = content
        .get(16..16 + manifest_len)
        .ok_or(OpenError::Truncated("manifest"))?;
    let at = 16 + manifest_len;
    let signatures_len = read_u32(content, at, "signature list")? as usize;
    let signature_bytes = content
        .get(at + 4..at + 4 + signatures_len)
        .ok_or(OpenError::Truncated("signature list"))?;
    if at + 4 + signatures_len != content.len() {
        return Err(OpenError::SignatureList(
            "bytes after the signature list".into(),
        ));
    }
    let signatures: Vec<SignatureEntry> = serde_json::from_slice(signature_bytes)
        .map_err(|e| OpenError::SignatureList(e.to_string()))?;
    // The list is not signed, so it must be written exactly one way: a bundle whose bytes
    // changed must not open as if it were the one signed.
    if serde_json::to_vec(&signatures).ok().as_deref() != Some(signature_bytes) {
        return Err(OpenError::SignatureList(
            "not written in its canonical form".into(),
        ));
    }
    if signatures.len() > limits.max_signatures {
        return Err(OpenError::TooManySignatures(limits.max_signatures));
    }
    let tar_frame = &bytes[8 + content_len as usize..];
    if tar_frame.is_empty() {
        return Err(OpenError::Truncated("tar frame"));
    }
    Ok(RawBundle {
        manifest_bytes,
        signatures,
        tar_frame,
    })
}

/// Writes the header frame and the tar frame into one bundle file.
pub fn assemble(manifest_bytes: &[u8], signatures: &[SignatureEntry], tar_frame: &[u8]) -> Vec<u8> {
    let signature_bytes = serde_json::to_vec(signatures).expect("signatures serialize");
    let mut content = Vec::with_capacity(16 + manifest_bytes.len() + 4 + signature_bytes.len());
    content.extend_from_slice(TAG);
    content.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    content.extend_from_slice(&(manifest_bytes.len() as u32).to_le_bytes());
    content.extend_from_slice(manifest_bytes);
    content.extend_from_slice(&(signature_bytes.len() as u32).to_le_bytes());
    content.extend_from_slice(&signature_bytes);
    let mut out = Vec::with_capacity(8 + content.len() + tar_frame.len());
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&content);
    out.extend_from_slice(tar_frame);
    out
}

/// Signs a manifest and tar frame with `key`.
pub fn sign(key: &SigningKey, manifest_bytes: &[u8], tar_frame: &[u8]) -> SignatureEntry {
    let message = signed_message(manifest_bytes, &Sha256::digest(tar_frame));
    SignatureEntry {
        key_id: key_id(&key.verifying_key()),
        manifest_sha256: sha256_hex(manifest_bytes),
        signature: hex(&key.sign(&message).to_bytes()),
    }
}

/// What goes into a bundle besides the files.
pub struct PackInput<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub version: u64,
    pub created: u64,
    pub expires: Option<u64>,
    pub compiler: &'a str,
    pub sources_sha256: &'a str,
}

/// Packs files into a signed bundle: deterministic tar (regular files, sorted, fixed
/// owners, modes and times, no extension headers), one zstd frame at a fixed level.
pub fn pack(
    input: &PackInput<'_>,
    files: &BTreeMap<String, Vec<u8>>,
    key: &SigningKey,
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_username("")?;
        header.set_groupname("")?;
        header.set_cksum();
        builder.append(&header, contents.as_slice())?;
    }
    let tar = builder.into_inner()?;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), COMPRESSION_LEVEL)?;
    encoder.include_contentsize(true)?;
    encoder.include_checksum(false)?;
    encoder.set_pledged_src_size(Some(tar.len() as u64))?;
    std::io::Write::write_all(&mut encoder, &tar)?;
    let tar_frame = encoder.finish()?;
    let manifest = Manifest {
        format: FORMAT_VERSION,
        region: input.region.to_string(),
        zone: input.zone.to_string(),
        version: input.version,
        created: input.created,
        expires: input.expires,
        abi: crate::abi::ABI_VERSION,
        compiler: input.compiler.to_string(),
        sources_sha256: input.sources_sha256.to_string(),
        tar_sha256: sha256_hex(&tar_frame),
        files: files
            .iter()
            .map(|(path, contents)| FileEntry {
                path: path.clone(),
                size: contents.len() as u64,
                sha256: sha256_hex(contents),
            })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("the manifest serializes");
    let signature = sign(key, &manifest_bytes, &tar_frame);
    Ok(assemble(&manifest_bytes, &[signature], &tar_frame))
}

/// Adds `key`'s signature to a bundle without touching its payload. The bundle's layout
/// and its existing signatures' form are checked; it is not decompressed.
pub fn add_signature(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, OpenError> {
    let raw = split(bytes, &OpenLimits::default())?;
    let manifest: Manifest = serde_json::from_slice(raw.manifest_bytes)
        .map_err(|e| OpenError::Manifest(e.to_string()))?;
    if manifest.tar_sha256 != sha256_hex(raw.tar_frame) {
        return Err(OpenError::TarHashMismatch);
    }
    let signature = sign(key, raw.manifest_bytes, raw.tar_frame);
    let mut signatures: Vec<SignatureEntry> = raw
        .signatures
        .into_iter()
        .filter(|s| s.key_id != signature.key_id)
        .collect();
    signatures.push(signature);
    signatures.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    Ok(assemble(raw.manifest_bytes, &signatures, raw.tar_frame))
}

/// Checks the signatures against the trusted keys; returns the key ids that verified.
fn verify_signatures(
    raw: &RawBundle<'_>,
    trusted: &[VerifyingKey],
) -> Result<Vec<String>, OpenError> {
    if raw.signatures.is_empty() {
        return Err(OpenError::Unsigned);
    }
    let message = signed_message(raw.manifest_bytes, &Sha256::digest(raw.tar_frame));
    let mut verified = Vec::new();
    let mut untrusted = Vec::new();
    for entry in &raw.signatures {
        if entry.key_id.len() != 16 || unhex(&entry.key_id).is_none() {
            return Err(OpenError::UnknownKeyId(entry.key_id.clone()));
        }
        let Some(key) = trusted.iter().find(|k| key_id(k) == entry.key_id) else {
            untrusted.push(entry.key_id.clone());
            continue;
        };
        let verifies = unhex(&entry.signature)
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b))
            .is_some_and(|signature| key.verify_strict(&message, &signature).is_ok());
        if !verifies {
            return Err(what_was_altered(raw, entry));
        }
        // Every byte of a bundle counts, the diagnostic hash beside a signature too.
        if entry.manifest_sha256 != sha256_hex(raw.manifest_bytes) {
            return Err(OpenError::SignatureList(format!(
                "the manifest hash beside key {}'s signature was altered",
                entry.key_id
            )));
        }
        verified.push(entry.key_id.clone());
    }
    if verified.is_empty() {
        return Err(OpenError::Untrusted(untrusted));
    }
    Ok(verified)
}

/// Names the part of a bundle that changed after a trusted key signed it. Only called once
/// the bundle is refused; the names help the operator and decide nothing.
fn what_was_altered(raw: &RawBundle<'_>, entry: &SignatureEntry) -> OpenError {
    let key = entry.key_id.clone();
    if entry.manifest_sha256 != sha256_hex(raw.manifest_bytes) {
        return OpenError::ManifestAltered(key);
    }
    match zstd::zstd_safe::find_frame_compressed_size(raw.tar_frame) {
        Err(code) if zstd::zstd_safe::get_error_name(code).contains("Src size") => {
            return OpenError::Truncated("tar frame");
        }
        Ok(len) if len < raw.tar_frame.len() => return OpenError::TrailingData,
        _ => {}
    }
    let tar_hash = serde_json::from_slice::<Manifest>(raw.manifest_bytes).map(|m| m.tar_sha256);
    match tar_hash {
        Ok(hash) if hash != sha256_hex(raw.tar_frame) => OpenError::PayloadAltered(key),
        _ => OpenError::BadSignature(key),
    }
}

/// Reads a bundle file whole, but never more than one byte past the largest bundle
/// [`OpenLimits::default`] accepts (so [`open`] refuses an oversized file as too large).
pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = OpenLimits::default().max_bundle_bytes;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens and verifies a bundle: signatures first, then the manifest, then the tar frame's
/// hash, then bounded decompression, then every archive entry against the manifest.
pub fn open(
    bytes: &[u8],
    trusted: &[VerifyingKey],
    limits: &OpenLimits,
) -> Result<Bundle, OpenError> {
    let raw = split(bytes, limits)?;
    let signed_by = verify_signatures(&raw, trusted)?;
    let (manifest, files) = unpack(&raw, limits)?;
    Ok(Bundle {
        manifest,
        files,
        signed_by,
        sha256: sha256_hex(bytes),
    })
}

/// Opens a bundle without checking who signed it (for `inspect` and `diff`): the layout,
/// manifest, hashes and archive are still checked as strictly as by [`open`].
pub fn open_unverified(
    bytes: &[u8],
    limits: &OpenLimits,
) -> Result<(Bundle, Vec<SignatureEntry>), OpenError> {
    let raw = split(bytes, limits)?;
    let (manifest, files) = unpack(&raw, limits)?;
    Ok((
        Bundle {
            manifest,
            files,
            signed_by: Vec::new(),
            sha256: sha256_hex(bytes),
        },
        raw.signatures,
    ))
}

fn unpack(
    raw: &RawBundle<'_>,
    limits: &OpenLimits,
) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), OpenError> {
    let manifest: Manifest = serde_json::from_slice(raw.manifest_bytes)
        .map_err(|e| OpenError::Manifest(e.to_string()))?;
    if manifest.format != FORMAT_VERSION {
        return Err(OpenError::UnknownFormat(manifest.format));
    }
    if manifest.abi != crate::abi::ABI_VERSION {
        return Err(OpenError::UnknownAbi {
            found: manifest.abi,
            expected: crate::abi::ABI_VERSION,
        });
    }
    if manifest.tar_sha256 != sha256_hex(raw.tar_frame) {
        return Err(OpenError::TarHashMismatch);
    }
    if manifest.files.len() > limits.max_files {
        return Err(OpenError::TooLarge {
            what: "file list",
            limit: limits.max_files as u64,
        });
    }
    // The tar of the listed files takes their 512-byte blocks, a header each and the end
    // blocks; past twice that (and a little room to name an unlisted file), it is a bomb.
    let listed: u64 = manifest
        .files
        .iter()
        .map(|f| f.size.div_ceil(512).saturating_mul(512).saturating_add(512))
        .fold(1024, u64::saturating_add);
    let bound = listed
        .saturating_mul(2)
        .saturating_add(1 << 20)
        .min(limits.max_unpacked_bytes);
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(raw.tar_frame).map_err(|code| {
        OpenError::Compression(zstd::zstd_safe::get_error_name(code).to_string())
    })?;
    if frame_len != raw.tar_frame.len() {
        return Err(OpenError::TrailingData);
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(raw.tar_frame)
        .map_err(|e| OpenError::Compression(e.to_string()))?
        .single_frame();
    // Sized for the listed files at once: growing by doubling copied the archive several
    // times and touched fresh pages at each step.
    let mut tar = Vec::with_capacity(usize::try_from(listed.min(bound)).unwrap_or(0) + 1);
    (&mut decoder)
        .take(bound + 1)
        .read_to_end(&mut tar)
        .map_err(|e| OpenError::Compression(e.to_string()))?;
    if tar.len() as u64 > bound {
        return Err(OpenError::TooLarge {
            what: "unpacked archive",
            limit: bound,
        });
    }
    let files = read_archive(&tar, &manifest)?;
    Ok((manifest, files))
}

/// Reads the archive entry by entry (raw: extension headers are seen, not interpreted).
fn read_archive(tar: &[u8], manifest: &Manifest) -> Result<BTreeMap<String, Vec<u8>>, OpenError> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| OpenError::Archive(e.to_string()))?
        .raw(true);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut previous: Option<String> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| OpenError::Archive(e.to_string()))?;
        let header = entry.header();
        let path = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        match header.entry_type() {
            tar::EntryType::Regular => {}
            kind @ (tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
            | tar::EntryType::GNUSparse) => {
                return Err(OpenError::ExtensionHeader(format!("{kind:?}")));
            }
            other => {
                return Err(OpenError::NotAFile {
                    path,
                    kind: format!("{other:?}").to_lowercase(),
                });
            }
        }
        if header.as_ustar().is_none() {
            return Err(OpenError::Archive(format!(
                "`{path}` does not have a ustar header"
            )));
        }
        if path.is_empty()
            || path.starts_with('/')
            || path.contains('\\')
            || path.contains('\0')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(OpenError::UnsafePath(path));
        }
        if files.contains_key(&path) {
            return Err(OpenError::Duplicate(path));
        }
        if previous.as_ref().is_some_and(|p| *p >= path) {
            return Err(OpenError::Unsorted(path));
        }
        let Some(listed) = manifest.files.iter().find(|f| f.path == path) else {
            return Err(OpenError::Unlisted(path));
        };
        let size = entry.size();
        if size != listed.size {
            return Err(OpenError::SizeMismatch {
                path,
                expected: listed.size,
                actual: size,
            });
        }
        let mut contents = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut contents)
            .map_err(|e| OpenError::Archive(e.to_string()))?;
        if sha256_hex(&contents) != listed.sha256 {
            return Err(OpenError::HashMismatch(path));
        }
        previous = Some(path.clone());
        files.insert(path, contents);
    }
    if let Some(missing) = manifest.files.iter().find(|f| !files.contains_key(&f.path)) {
        return Err(OpenError::Missing(missing.path.clone()));
    }
    Ok(files)
}

/// Key files: `NAME.key` holds `edgepack-secret-key-v1 <base64 seed>`, `NAME.pub` holds
/// `edgepack-public-key-v1 <key id> <base64 key>`.
pub mod keys {
    use base64::Engine;
    use ed25519_dalek::{SigningKey, VerifyingKey};

    pub const SECRET_PREFIX: &str = "edgepack-secret-key-v1";
    pub const PUBLIC_PREFIX: &str = "edgepack-public-key-v1";

    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub enum KeyError {
        #[error("not an edgepack {0} key file")]
        Format(&'static str),
        #[error(
            "this is a secret key file: give its public key (the `.pub` beside it), and keep the secret key off machines that only verify"
        )]
        SecretWherePublic,
        #[error("this is a public key file: signing needs the secret key (the `.key` beside it)")]
        PublicWhereSecret,
        #[error("the key id in the file does not match its key")]
        KeyIdMismatch,
    }

    pub fn secret_key_text(key: &SigningKey) -> String {
        format!(
            "{SECRET_PREFIX} {}\n",
            base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
        )
    }

    pub fn public_key_text(key: &VerifyingKey) -> String {
        format!(
            "{PUBLIC_PREFIX} {} {}\n",
            super::key_id(key),
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        )
    }

    fn field<'a>(text: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
        let mut parts = line.split_whitespace();
        (parts.next()? == prefix).then(|| parts.collect())
    }

    pub fn parse_secret_key(text: &str) -> Result<SigningKey, KeyError> {
        if field(text, PUBLIC_PREFIX).is_some() {
            return Err(KeyError::PublicWhereSecret);
        }
        let fields = field(text, SECRET_PREFIX).ok_or(KeyError::Format("secret"))?;
        let bytes = fields
            .first()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or(KeyError::Format("secret"))?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
        if field(text, SECRET_PREFIX).is_some() {
            return Err(KeyError::SecretWherePublic);
        }
        let fields = field(text, PUBLIC_PREFIX).ok_or(KeyError::Format("public"))?;
        let [id, key] = fields.as_slice() else {
            return Err(KeyError::Format("public"));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or(KeyError::Format("public"))?;
        if super::key_id(&key) != *id {
            return Err(KeyError::KeyIdMismatch);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests;
