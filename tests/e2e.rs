//! Real processes and real HTTP for the end-to-end tests: the `edgepack` and `edgepack-node`
//! binaries, a private CA, a TLS origin server on loopback, and an HTTP client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use edgepack_bundles::bundle::{self, OpenLimits, PackInput, keys};

/// A binary of the workspace, built beside this test executable (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --bins`) first",
        path.display()
    );
    path
}

/// The async runtime the origin servers and clients of a test binary share.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Runs `edgepack` and returns its stdout; panics with its stderr when it fails.
pub fn edgepack(args: &[&str]) -> String {
    let output = Command::new(binary("edgepack"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run edgepack");
    assert!(
        output.status.success(),
        "edgepack {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A signing key pair made by `edgepack keygen`.
#[derive(Clone, Debug)]
pub struct Keys {
    pub secret: PathBuf,
    pub public: PathBuf,
}

pub fn keygen(dir: &Path, name: &str) -> Keys {
    let out = dir.to_str().expect("utf-8 path");
    edgepack(&["keygen", "--out-dir", out, "--name", name]);
    Keys {
        secret: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    }
}

/// Copies a policy directory, then applies `(file, from, to)` text edits (each must apply).
pub fn policy_variant(from: &Path, to: &Path, edits: &[(&str, &str, &str)]) {
    copy_dir(from, to);
    for (file, before, after) in edits {
        let path = to.join(file);
        let text = std::fs::read_to_string(&path).expect("read policy file");
        assert!(text.contains(before), "{file} has no `{before}`");
        std::fs::write(&path, text.replacen(before, after, 1)).expect("write policy file");
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Builds `policy` for `regions` with `edgepack build`; the bundles' bytes by region.
pub fn build(
    policy: &Path,
    key: &Keys,
    out: &Path,
    version: u64,
    regions: &[&str],
) -> BTreeMap<String, Vec<u8>> {
    let mut args = vec![
        "build".to_string(),
        policy.display().to_string(),
        "--key".into(),
        key.secret.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--version".into(),
        version.to_string(),
    ];
    for region in regions {
        args.extend(["--region".to_string(), region.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    edgepack(&args);
    regions
        .iter()
        .map(|region| {
            let path = out.join(format!("{region}.edgepack"));
            let bytes = std::fs::read(&path).expect("read the built bundle");
            (region.to_string(), bytes)
        })
        .collect()
}

/// The same bundle under another version, signed by `key`: what a later build of the same
/// sources would ship.
pub fn with_version(bundle_bytes: &[u8], version: u64, key: &Keys) -> Vec<u8> {
    repack(bundle_bytes, key, |manifest| manifest.version = version)
}

/// The bundle's files packed again under a manifest `edit` changed, signed by `key`.
pub fn repack(
    bundle_bytes: &[u8],
    key: &Keys,
    edit: impl FnOnce(&mut edgepack_bundles::bundle::Manifest),
) -> Vec<u8> {
    repack_with(bundle_bytes, key, |manifest, _| edit(manifest))
}

/// The bundle packed again after `edit` changed its manifest and files (the manifest's
/// list of files follows them), signed by `key`: a bundle a faulty build could ship.
pub fn repack_with(
    bundle_bytes: &[u8],
    key: &Keys,
    edit: impl FnOnce(&mut edgepack_bundles::bundle::Manifest, &mut BTreeMap<String, Vec<u8>>),
) -> Vec<u8> {
    let (opened, _) =
        bundle::open_unverified(bundle_bytes, &OpenLimits::default()).expect("a valid bundle");
    let secret = std::fs::read_to_string(&key.secret).expect("read the secret key");
    let secret = keys::parse_secret_key(&secret).expect("a secret key");
    let mut manifest = opened.manifest;
    let mut files = opened.files;
    edit(&mut manifest, &mut files);
    let input = PackInput {
        region: &manifest.region,
        zone: &manifest.zone,
        version: manifest.version,
        created: manifest.created,
        expires: manifest.expires,
        compiler: &manifest.compiler,
        sources_sha256: &manifest.sources_sha256,
    };
    bundle::pack(&input, &files, &secret).expect("pack")
}

/// Puts a bundle in place the way a deploy does: written beside, then renamed over.
pub fn install(bytes: &[u8], dir: &Path, region: &str) {
    let staging = dir.join(format!(".{region}.edgepack.tmp"));
    std::fs::write(&staging, bytes).expect("write the bundle");
    std::fs::rename(&staging, dir.join(format!("{region}.edgepack"))).expect("rename");
}

/// A test certificate authority, for origins and for the node's own TLS.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_file: PathBuf,
    pub ca: CertificateDer<'static>,
}

/// A certificate issued by [`Pki`], as files and as rustls values.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgepack test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write ca.pem");
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca_file,
            ca: cert.der().clone(),
        }
    }

    /// A leaf certificate for `names`, written as `<stem>.pem` and `<stem>.key` in `dir`.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> Issued {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let cert_file = dir.join(format!("{stem}.pem"));
        let key_file = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Issued {
            cert_file,
            key_file,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A TLS client configuration trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("add the CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// An HTTPS origin server on loopback (HTTP/1.1 and HTTP/2) that records what reaches it.
///
/// Its answers depend on the path: `…/private…` is `Cache-Control: private`, `…/cookie…`
/// sets a cookie, `…/by-language…` varies on `Accept-Language`, `…/slow…` takes 500 ms,
/// `…/tagged…` has the entity tag [`TAG`] and answers `304` to `If-None-Match` with it,
/// `…/ws…` with `Upgrade` becomes a WebSocket echoing what it gets; every answer carries `server: origin` and the
/// number of requests served so far in `x-origin-count` and the JSON body.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub fn start(pki: &Pki, names: &[&str], dir: &Path) -> Origin {
        let issued = pki.issue(names, dir, "origin");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(issued.chain, issued.key)
            .expect("origin certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the origin");
        let addr = listener.local_addr().expect("origin address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = runtime().spawn(async move {
            let count = Arc::new(AtomicUsize::new(0));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, recorded, count) =
                    (acceptor.clone(), recorded.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let stalls = request.uri().path().contains("/stall-body");
                            let answer = origin_answer(request, recorded.clone(), count.clone());
                            async move {
                                let response = answer.await?;
                                Ok::<_, std::convert::Infallible>(if stalls {
                                    response.map(|_| StalledBody::first(b"{\"partial\":").boxed())
                                } else {
                                    response.map(BodyExt::boxed)
                                })
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, seen, task }
    }

    /// `--resolve` arguments sending `host:port` for each of `hosts` here.
    pub fn resolve_args(&self, hosts: &[&str]) -> Vec<String> {
        hosts
            .iter()
            .flat_map(|host| ["--resolve".to_string(), format!("{host}={}", self.addr)])
            .collect()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("origin log").clone()
    }

    /// The last request whose target starts with `prefix`.
    pub fn last(&self, prefix: &str) -> Option<Seen> {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.target.starts_with(prefix))
    }

    /// How many requests whose target starts with `prefix` reached the origin.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.target.starts_with(prefix))
            .count()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The entity tag of the origin's `…/tagged…` answers.
pub const TAG: &str = "\"v1\"";

/// A body that sends its first bytes and then nothing more: an origin stalled mid-answer.
struct StalledBody {
    first: Option<Bytes>,
}

impl StalledBody {
    fn first(bytes: &'static [u8]) -> StalledBody {
        StalledBody {
            first: Some(Bytes::from_static(bytes)),
        }
    }
}

impl hyper::body::Body for StalledBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(bytes) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes)))),
            // Never woken: the rest never comes.
            None => std::task::Poll::Pending,
        }
    }
}

async fn origin_answer(
    mut request: http::Request<hyper::body::Incoming>,
    recorded: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
    let tag_matches = request
        .headers()
        .get("if-none-match")
        .is_some_and(|v| v == TAG);
    recorded.lock().expect("origin log").push(Seen {
        method: request.method().to_string(),
        target: target.clone(),
        version: request.version(),
        headers: request.headers().clone(),
    });
    if target.contains("/ws") && request.headers().contains_key("upgrade") {
        // A WebSocket endpoint that echoes every byte it gets.
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        return Ok(http::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(Full::new(Bytes::new()))
            .expect("a response"));
    }
    let method = request.method().clone();
    let _ = request.into_body().collect().await;
    if target.contains("/refuse-writes") && method != http::Method::GET {
        return Ok(http::Response::builder()
            .status(409)
            .body(Full::new(Bytes::from_static(b"{\"error\":\"conflict\"}")))
            .expect("a response"));
    }
    if target.contains("/gzip-transfer-coding") {
        // hyper adds the final `chunked`: the body goes out as `gzip, chunked`.
        return Ok(http::Response::builder()
            .header("transfer-encoding", "gzip")
            .body(Full::new(Bytes::from_static(b"\x1f\x8b compressed")))
            .expect("a response"));
    }
    if target.contains("/slow") {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let body = serde_json::json!({ "origin": "ok", "n": n, "target": target }).to_string();
    let mut response = http::Response::builder()
        .header("content-type", "application/json")
        .header("server", "origin")
        .header("x-origin-count", n.to_string());
    if target.contains("/private") {
        response = response.header("cache-control", "private");
    }
    if target.contains("/cookie") {
        response = response.header("set-cookie", "session=secret");
    }
    if target.contains("/by-language") {
        response = response.header("vary", "Accept-Language");
    }
    if target.contains("/tagged") {
        response = response.header("etag", TAG);
        if tag_matches {
            return Ok(response
                .status(304)
                .body(Full::new(Bytes::new()))
                .expect("a response"));
        }
    }
    Ok(response
        .body(Full::new(Bytes::from(body)))
        .expect("a response"))
}

/// `edgepack-node` arguments for a node on its own directories: trusting `keys`, its origins
/// (`origin_hosts`, as `host:port`) sent to the test `origin` signed by `pki`'s CA, then
/// `extra`.
pub fn node_args(
    bundles: &Path,
    state: &Path,
    keys: &Keys,
    pki: &Pki,
    origin: &Origin,
    origin_hosts: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--bundle".into(),
        bundles.display().to_string(),
        "--trust".into(),
        keys.public.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--origin-ca".into(),
        pki.ca_file.display().to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    args.extend(origin.resolve_args(origin_hosts));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// An `edgepack-node` process, its addresses, and what it has written so far.
pub struct NodeProcess {
    child: Child,
    pub url: String,
    pub listen: SocketAddr,
    pub admin: String,
    log: Arc<Mutex<Vec<String>>>,
    access: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts the node with `args` (it listens on ports of its own choosing unless told)
    /// and waits until it serves.
    pub fn start(args: &[String]) -> NodeProcess {
        let mut command = Command::new(binary("edgepack-node"));
        if !args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.iter().any(|a| a == "--admin") {
            command.args(["--admin", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .env_remove("EDGEPACK_PSEUDONYMIZE_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edgepack-node");
        let log = collect_lines(child.stderr.take().expect("stderr"));
        let access = collect_lines(child.stdout.take().expect("stdout"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let serving = log.lock().expect("log").iter().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                (value["message"] == "serving").then_some(value)
            });
            if let Some(line) = serving {
                let listen: SocketAddr = line["listen"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("the serving line names the address");
                let admin = line["admin"].as_str().expect("admin address").to_string();
                return NodeProcess {
                    child,
                    url: format!("http://{listen}"),
                    listen,
                    admin: format!("http://{admin}"),
                    log,
                    access,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "edgepack-node exited ({status}) before serving:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
            assert!(Instant::now() < deadline, "edgepack-node did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the node logged on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The access log so far, one JSON value per request.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.access
            .lock()
            .expect("access log")
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the node.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Waits for the node to exit by itself (after a signal), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The node's `/metrics` text.
    pub fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.admin), &[]).body
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name (`HUP`, `TERM`, `INT`) to a process.
pub fn send_signal(pid: u32, name: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = match name {
        "HUP" => Signal::HUP,
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        other => panic!("no signal named {other}"),
    };
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .expect("a process id");
    kill_process(pid, signal).expect("send the signal");
}

fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

/// A response as the client saw it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http()
    })
}

/// Sends one request with the shared keep-alive client.
pub async fn send_async(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client().request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    runtime()
        .block_on(send_async(method, url, headers, body))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, "")
}

/// Waits until `check` holds for a GET of `url`, up to `timeout`.
pub fn eventually(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    check: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = get(url, headers);
        if check(&reply) || Instant::now() >= deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signs a JWT with the test key the example policy trusts (`tests/fixtures`).
pub fn token(claims: &serde_json::Value) -> String {
    let pem = std::fs::read(crate::workspace_root().join("tests/fixtures/auth-dev-es256.key.pem"))
        .expect("read the fixture key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("an EC key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &key,
    )
    .expect("sign a token")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
