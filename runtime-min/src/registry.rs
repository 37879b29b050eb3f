//! Releases in an OCI registry: `edgepack push` writes one, `edgepack pull` and nodes with
//! `--pull` read their region's bundle from it.
//!
//! A release is an image index (tagged, e.g. `registry/team/api:prod`) with one image
//! manifest per region. Each manifest has edgepack's own `artifactType`, the region as an
//! annotation, the OCI empty config, and the bundle as its one layer. Everything is pushed
//! by digest first; the tag is moved last, so a reader sees the old release or the whole new
//! one. Nothing read from a registry is trusted: bundles are verified by the node exactly as
//! a local file is, and sizes are bounded before they are read.

use std::collections::BTreeMap;
use std::time::Duration;

use edgepack_bundles::bundle::{self, OpenLimits};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `artifactType` of every region's manifest (and of the index).
pub const ARTIFACT_TYPE: &str = "application/vnd.edgepack.bundle.v1";
/// The media type of the layer holding a bundle (`<region>.edgepack`, a `.tar.zst`).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.edgepack.bundle.v1.tar+zstd";
/// The annotation naming a manifest's region.
pub const REGION_ANNOTATION: &str = "dev.edgepack.region";
/// The annotation holding a release's bundle version.
pub const VERSION_ANNOTATION: &str = "dev.edgepack.version";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Manifests are small; a larger one is not an edgepack release.
const MAX_MANIFEST_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "`{reference}` is not a registry reference ({reason}); e.g. registry.example.com/team/api:prod"
    )]
    Reference { reference: String, reason: String },
    #[error("registry credentials for {registry}: {reason}")]
    Credentials { registry: String, reason: String },
    #[error("{0}")]
    Client(String),
    #[error("registry request for {reference} failed: {error}")]
    Registry { reference: String, error: String },
    #[error("{reference} is not an edgepack release: {reason}")]
    NotARelease { reference: String, reason: String },
    #[error("the release at {reference} has no bundle for region {region} (it has: {available})")]
    NoRegion {
        reference: String,
        region: String,
        available: String,
    },
    #[error("{what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{0}")]
    Bundle(String),
}

/// User name and password (or token) for a registry, from flags.
#[derive(Clone, Debug, Default)]
pub struct Login {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A registry connection for one reference.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
}

/// A bundle read from a release.
#[derive(Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// The digest of the release (the image index) it came from.
    pub release: String,
    /// The digest of the region's manifest.
    pub manifest: String,
}

/// One region's bundle of a release being pushed.
#[derive(Debug)]
pub struct ReleaseBundle {
    pub region: String,
    pub version: u64,
    pub bytes: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", bundle::hex(&Sha256::digest(bytes)))
}

/// An error with the causes under it (`error sending request` says little without its
/// `connection refused`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

/// Whether a registry host is this machine: only those may be spoken to over plain HTTP.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses `registry/repository[:tag][@digest]`; a reference without a tag means `latest`.
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    let reference: Reference =
        text.parse()
            .map_err(|e: oci_client::ParseError| RegistryError::Reference {
                reference: text.to_string(),
                reason: e.to_string(),
            })?;
    // Without a registry host, the parser falls back to Docker Hub; say it rather than
    // guess, since edgepack releases live in the team's own registry.
    let first = text.split('/').next().unwrap_or("");
    if !text.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost")
    {
        return Err(RegistryError::Reference {
            reference: text.to_string(),
            reason: "it names no registry host".into(),
        });
    }
    Ok(reference)
}

/// The credentials for a registry: `login` when given, else the Docker configuration
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included),
/// else none.
pub fn credentials(registry: &str, login: &Login) -> Result<RegistryAuth, RegistryError> {
    match (&login.username, &login.password) {
        (Some(user), Some(password)) => {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(RegistryError::Credentials {
                registry: registry.to_string(),
                reason: "give both a user name and a password".into(),
            });
        }
        (None, None) => {}
    }
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
        Err(E::ConfigNotFound | E::NoCredentialConfigured | E::ConfigReadError) => {
            Ok(RegistryAuth::Anonymous)
        }
        Err(error) => Err(RegistryError::Credentials {
            registry: registry.to_string(),
            reason: error.to_string(),
        }),
    }
}

impl Registry {
    /// A client for `reference`'s registry: HTTPS, or plain HTTP when the registry is on
    /// this machine; requests time out rather than hang.
    pub fn connect(reference: &str, login: &Login) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let auth = credentials(&registry, login)?;
        let protocol = if is_loopback(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::try_from(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        })
        .map_err(|e| RegistryError::Client(format!("cannot build the registry client: {e}")))?;
        Ok(Registry {
            client,
            auth,
            reference,
        })
    }

    pub fn reference(&self) -> String {
        self.reference.whole()
    }

    fn registry_error(&self, error: impl std::fmt::Display) -> RegistryError {
        let mut error = error.to_string();
        if error.contains("code: 401") || error.contains("UNAUTHORIZED") {
            let host = self.reference.resolve_registry();
            error.push_str(&format!(
                " (the registry wants credentials: give a user and password, or `docker login \
                 {host}` so the Docker configuration holds them)"
            ));
        }
        RegistryError::Registry {
            reference: self.reference.whole(),
            error,
        }
    }

    /// The digest the reference points at now (one small request).
    pub async fn resolve(&self) -> Result<String, RegistryError> {
        self.client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.registry_error(error_chain(&e)))
    }

    /// Publishes a release: blobs, then each region's manifest and the index by digest, then
    /// the `extra_tags`, then the reference's own tag last (the one nodes follow). Returns the
    /// release's digest.
    pub async fn push(
        &self,
        bundles: &[ReleaseBundle],
        extra_tags: &[String],
    ) -> Result<String, RegistryError> {
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        let at_digest = |digest: &str| self.reference.clone_with_digest(digest.to_string());
        let empty = digest_of(EMPTY_CONFIG);
        self.client
            .push_blob(&self.reference, EMPTY_CONFIG.to_vec(), &empty)
            .await
            .map_err(|e| self.registry_error(error_chain(&e)))?;
        let mut entries = Vec::new();
        for release in bundles {
            let layer = digest_of(&release.bytes);
            self.client
                .push_blob(&self.reference, release.bytes.clone(), &layer)
                .await
                .map_err(|e| self.registry_error(error_chain(&e)))?;
            let annotations = BTreeMap::from([
                (REGION_ANNOTATION.to_string(), release.region.clone()),
                (VERSION_ANNOTATION.to_string(), release.version.to_string()),
            ]);
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
                artifact_type: Some(ARTIFACT_TYPE.to_string()),
                config: Some(Descriptor {
                    media_type: EMPTY_MEDIA_TYPE.to_string(),
                    digest: empty.clone(),
                    size: EMPTY_CONFIG.len() as u64,
                    artifact_type: None,
                    annotations: BTreeMap::new(),
                }),
                layers: vec![Descriptor {
                    media_type: BUNDLE_MEDIA_TYPE.to_string(),
                    digest: layer,
                    size: release.bytes.len() as u64,
                    artifact_type: None,
                    annotations: BTreeMap::from([(
                        TITLE_ANNOTATION.to_string(),
                        format!("{}.edgepack", release.region),
                    )]),
                }],
                manifests: Vec::new(),
                annotations: annotations.clone(),
            };
            let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
            let digest = digest_of(&bytes);
            self.client
                .push_manifest_raw(
                    &at_digest(&digest),
                    bytes.clone(),
                    http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
                )
                .await
                .map_err(|e| self.registry_error(error_chain(&e)))?;
            entries.push(Descriptor {
                media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
                digest,
                size: bytes.len() as u64,
                artifact_type: Some(ARTIFACT_TYPE.to_string()),
                annotations,
            });
        }
        let mut annotations = BTreeMap::new();
        if let Some(version) = bundles.first().map(|b| b.version) {
            annotations.insert(VERSION_ANNOTATION.to_string(), version.to_string());
        }
        let index = Manifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            config: None,
            layers: Vec::new(),
            manifests: entries,
            annotations,
        };
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        let digest = digest_of(&bytes);
        let content_type = http::HeaderValue::from_static(OCI_IMAGE_INDEX_MEDIA_TYPE);
        self.client
            .push_manifest_raw(&at_digest(&digest), bytes.clone(), content_type.clone())
            .await
            .map_err(|e| self.registry_error(error_chain(&e)))?;
        for tag in extra_tags {
            let tagged = Reference::with_tag(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                tag.clone(),
            );
            self.client
                .push_manifest_raw(&tagged, bytes.clone(), content_type.clone())
                .await
                .map_err(|e| self.registry_error(error_chain(&e)))?;
        }
        if self.reference.digest().is_none() {
            self.client
                .push_manifest_raw(&self.reference, bytes, content_type)
                .await
                .map_err(|e| self.registry_error(error_chain(&e)))?;
        }
        Ok(digest)
    }

    /// Reads one manifest by reference, bounded, checked against its digest.
    async fn manifest(&self, reference: &Reference) -> Result<(Manifest, String), RegistryError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(
                reference,
                &self.auth,
                &[OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE],
            )
            .await
            .map_err(|e| self.registry_error(error_chain(&e)))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                what: "the manifest",
                size: bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES as u64,
            });
        }
        let actual = digest_of(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual
        {
            return Err(self.registry_error(format!(
                "the manifest's digest is {actual}, not the {expected} asked for"
            )));
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::NotARelease {
            reference: reference.whole(),
            reason: format!("its manifest is not valid JSON ({e})"),
        })?;
        Ok((manifest, if digest.is_empty() { actual } else { digest }))
    }

    /// The regions a release holds and their manifests' digests.
    async fn regions(&self, release: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let reference = self.reference.clone_with_digest(release.to_string());
        let (index, _) = self.manifest(&reference).await?;
        if index.media_type.as_deref() != Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
            || index.artifact_type.as_deref() != Some(ARTIFACT_TYPE)
        {
            return Err(RegistryError::NotARelease {
                reference: self.reference.whole(),
                reason: format!(
                    "expected an image index with artifactType {ARTIFACT_TYPE}, found {} with {}",
                    index.media_type.as_deref().unwrap_or("no media type"),
                    index.artifact_type.as_deref().unwrap_or("no artifactType"),
                ),
            });
        }
        Ok(index
            .manifests
            .into_iter()
            .filter(|m| m.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
            .filter_map(|m| Some((m.annotations.get(REGION_ANNOTATION)?.clone(), m.digest)))
            .collect())
    }

    /// Fetches `region`'s bundle from the release the reference points at (or from the
    /// release `release` when given: the digest a [`Registry::resolve`] returned).
    pub async fn pull(
        &self,
        region: &str,
        release: Option<&str>,
        limits: &OpenLimits,
    ) -> Result<Pulled, RegistryError> {
        let release = match release {
            Some(digest) => digest.to_string(),
            None => self.resolve().await?,
        };
        let regions = self.regions(&release).await?;
        let Some((_, manifest_digest)) = regions.iter().find(|(r, _)| r == region) else {
            let mut available: Vec<&str> = regions.iter().map(|(r, _)| r.as_str()).collect();
            available.sort_unstable();
            return Err(RegistryError::NoRegion {
                reference: self.reference.whole(),
                region: region.to_string(),
                available: if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                },
            });
        };
        let reference = self.reference.clone_with_digest(manifest_digest.clone());
        let (manifest, _) = self.manifest(&reference).await?;
        let layer = match manifest.layers.as_slice() {
            [layer] if layer.media_type == BUNDLE_MEDIA_TYPE => layer,
            _ => {
                return Err(RegistryError::NotARelease {
                    reference: reference.whole(),
                    reason: format!("a region's manifest must have one {BUNDLE_MEDIA_TYPE} layer"),
                });
            }
        };
        if layer.size > limits.max_bundle_bytes {
            return Err(RegistryError::TooLarge {
                what: "the bundle",
                size: layer.size,
                limit: limits.max_bundle_bytes,
            });
        }
        let descriptor = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&reference, &descriptor)
            .await
            .map_err(|e| self.registry_error(error_chain(&e)))?;
        let mut bytes = Vec::with_capacity(layer.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.registry_error(error_chain(&e)))?;
            if (bytes.len() + chunk.len()) as u64 > layer.size {
                return Err(RegistryError::TooLarge {
                    what: "the bundle layer",
                    size: (bytes.len() + chunk.len()) as u64,
                    limit: layer.size,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if digest_of(&bytes) != layer.digest {
            return Err(self.registry_error(format!(
                "the bundle's digest is {}, the manifest says {}",
                digest_of(&bytes),
                layer.digest
            )));
        }
        Ok(Pulled {
            bytes,
            release,
            manifest: manifest_digest.clone(),
        })
    }
}

/// The registry client's TLS uses the process-wide rustls provider: the same `ring` one the
/// node uses for origins, so only one provider is ever built in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_may_use_plain_http() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("localhost.example.com:5000"));
    }

    #[test]
    fn references_must_name_their_registry() {
        let reference = parse_reference("127.0.0.1:5000/team/api:prod").unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "team/api");
        assert_eq!(reference.tag(), Some("prod"));
        assert!(parse_reference("team/api:prod").is_err());
        assert!(parse_reference("api").is_err());
        assert!(parse_reference("registry.example.com/Team/API").is_err());
    }

    #[test]
    fn flags_win_over_the_docker_configuration_and_come_in_pairs() {
        let login = Login {
            username: Some("ci".into()),
            password: Some("secret".into()),
        };
        assert!(matches!(
            credentials("registry.example.com", &login),
            Ok(RegistryAuth::Basic(user, password)) if user == "ci" && password == "secret"
        ));
        let half = Login {
            username: Some("ci".into()),
            password: None,
        };
        assert!(credentials("registry.example.com", &half).is_err());
    }

    #[test]
    fn release_manifests_round_trip_with_their_annotations() {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: None,
            layers: Vec::new(),
            manifests: vec![Descriptor {
                media_type: OCI_IMAGE_MEDIA_TYPE.into(),
                digest: digest_of(b"x"),
                size: 1,
                artifact_type: Some(ARTIFACT_TYPE.into()),
                annotations: BTreeMap::from([(REGION_ANNOTATION.into(), "eu-west".into())]),
            }],
            annotations: BTreeMap::new(),
        };
        let json = serde_json::to_value(&manifest).unwrap();
        assert_eq!(json["mediaType"], OCI_IMAGE_INDEX_MEDIA_TYPE);
        assert_eq!(json["manifests"][0]["artifactType"], ARTIFACT_TYPE);
        assert_eq!(
            json["manifests"][0]["annotations"][REGION_ANNOTATION],
            "eu-west"
        );
        assert!(json.get("layers").is_none());
    }
}
