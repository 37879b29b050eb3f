//! Origins for `Proxy` effects: pooled keep-alive HTTP/1.1 connections, TLS to `https`
//! origins (system roots plus `--origin-ca`, SNI by the origin's host), `--resolve`
//! overrides, connect and response timeouts, and the request and response rewriting a
//! reverse proxy owes: hop-by-hop headers removed, `X-Forwarded-*` added.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edgepack_bundles::plan::{OriginPlan, RegionPlan};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::handler::BoxError;

/// Connect timeout for an origin the active plan does not name.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why an origin request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the origin: {0}")]
    Connect(String),
    #[error("the origin did not answer in time")]
    Timeout,
    #[error("the origin's answer was malformed: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// The metric label of this kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol(_) => "protocol",
        }
    }
}

/// A connection to an origin, plain or TLS.
pub enum OriginStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for OriginStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_flush(cx),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens origin connections: `--resolve` first, then DNS; TLS for `https`.
#[derive(Clone)]
pub struct OriginConnector {
    resolve: Arc<HashMap<(String, u16), SocketAddr>>,
    connect_timeouts: Arc<ArcSwap<HashMap<(String, u16), Duration>>>,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for OriginConnector {
    type Response = TokioIo<OriginStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

impl OriginConnector {
    async fn connect(&self, uri: Uri) -> io::Result<OriginStream> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let host = uri
            .host()
            .ok_or_else(|| invalid("origin URL without a host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let tls = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let key = (host.clone(), port);
        let timeout = self
            .connect_timeouts
            .load()
            .get(&key)
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let connect = async {
            let addrs: Vec<SocketAddr> = match self.resolve.get(&key) {
                Some(addr) => vec![*addr],
                None => tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .collect(),
            };
            let mut last =
                io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {host}:{port} timed out"),
            )
        })??;
        let _ = stream.set_nodelay(true);
        if !tls {
            return Ok(OriginStream::Plain(stream));
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| invalid("origin host is not a valid TLS server name"))?;
        let tls_stream = tokio::time::timeout(timeout, self.tls.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(OriginStream::Tls(Box::new(tls_stream)))
    }
}

type OriginClient = Client<OriginConnector, Full<Bytes>>;

/// The node's origin client, shared by every request. Each thread that sends keeps its own
/// pool of keep-alive connections: a worker's origin connections are driven by its own
/// runtime, so a request never waits on another thread's, and they end with their worker.
/// A clone shares the pools.
#[derive(Clone)]
pub struct Origins {
    connector: OriginConnector,
    connect_timeouts: Arc<ArcSwap<HashMap<(String, u16), Duration>>>,
    /// Alive while any clone is: a thread drops the pools of origins that are gone.
    alive: Arc<()>,
}

thread_local! {
    /// This thread's connection pool for each live [`Origins`].
    static POOLS: RefCell<Vec<(Weak<()>, OriginClient)>> = const { RefCell::new(Vec::new()) };
}

impl Origins {
    pub fn new(
        resolve: HashMap<(String, u16), SocketAddr>,
        origin_ca: Option<&Path>,
    ) -> Result<Origins, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = origin_ca {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--origin-ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--origin-ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--origin-ca {}: no certificates", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--origin-ca {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connect_timeouts = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let connector = OriginConnector {
            resolve: Arc::new(resolve),
            connect_timeouts: connect_timeouts.clone(),
            tls: TlsConnector::from(Arc::new(config)),
        };
        Ok(Origins {
            connector,
            connect_timeouts,
            alive: Arc::new(()),
        })
    }

    /// Starts `request` on this thread's pool (made on first use).
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            // A live `Origins` keeps its allocation, and a weak entry keeps a dead one's:
            // addresses are not reused while an entry holds them.
            let mine = Arc::as_ptr(&self.alive);
            if let Some((_, client)) = pools.iter().find(|(alive, _)| alive.as_ptr() == mine) {
                return client.request(request);
            }
            pools.retain(|(alive, _)| alive.strong_count() > 0);
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(self.connector.clone());
            let pending = client.request(request);
            pools.push((Arc::downgrade(&self.alive), client));
            pending
        })
    }

    /// Takes the connect timeouts of a newly active plan.
    pub fn use_plan(&self, plan: &RegionPlan) {
        let timeouts = plan
            .origins
            .iter()
            .map(|o| {
                (
                    (o.host.to_ascii_lowercase(), o.port),
                    Duration::from_millis(o.connect_timeout_ms),
                )
            })
            .collect();
        self.connect_timeouts.store(Arc::new(timeouts));
    }

    /// Sends a request to an origin; the response head must arrive within `timeout`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                let timed_out = std::error::Error::source(&error)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
                if timed_out {
                    Err(UpstreamError::Timeout)
                } else if error.is_connect() {
                    Err(UpstreamError::Connect(error_chain(&error)))
                } else {
                    Err(UpstreamError::Protocol(error_chain(&error)))
                }
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where requests to one origin go, worked out once when a bundle is activated: the scheme,
/// the authority (which the `Host` header of each request repeats) and the path prefix.
#[derive(Clone, Debug)]
pub struct OriginTarget {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    prefix: String,
}

impl OriginTarget {
    pub fn new(origin: &OriginPlan) -> Result<OriginTarget, http::Error> {
        let default_port = if origin.tls { 443 } else { 80 };
        let authority = match (origin.port == default_port, origin.host.contains(':')) {
            (true, false) => Authority::try_from(origin.host.as_str())?,
            (true, true) => Authority::try_from(format!("[{}]", origin.host))?,
            (false, false) => Authority::try_from(format!("{}:{}", origin.host, origin.port))?,
            (false, true) => Authority::try_from(format!("[{}]:{}", origin.host, origin.port))?,
        };
        Ok(OriginTarget {
            scheme: if origin.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            host: HeaderValue::from_str(authority.as_str())?,
            authority,
            prefix: origin.path_prefix.trim_end_matches('/').to_string(),
        })
    }

    /// The URI of a request to the origin: its path prefix, then the request's path and
    /// query (`/` when it has none).
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let prefix = &self.prefix;
        let resolved = path_and_query.and_then(|target| {
            resolve_dot_segments(target.path()).map(|path| match target.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            })
        });
        let path_and_query = match (resolved, path_and_query) {
            (Some(resolved), _) => PathAndQuery::try_from(format!("{prefix}{resolved}"))?,
            // The request's own, already checked: shared, not parsed again.
            (None, Some(path_and_query)) if prefix.is_empty() => path_and_query.clone(),
            (None, path_and_query) => PathAndQuery::try_from(format!(
                "{prefix}{}",
                path_and_query.map_or("/", PathAndQuery::as_str)
            ))?,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Ok(Uri::from_parts(parts)?)
    }

    /// The `Host` header of requests to the origin.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }
}

/// A path with dot segments (`.` and `..`, percent-encoded or not) as the policy resolved it
/// before choosing the route: empty segments dropped, each `..` taking off the segment
/// before it, the others as the client wrote them; `None` for a path without any (sent
/// as it came). The origin is then sent the path the policy judged, and cannot resolve it
/// otherwise, or out of its endpoint's path prefix.
pub fn resolve_dot_segments(path: &str) -> Option<String> {
    // `Some(true)` for `..`, `Some(false)` for `.`, percent-decoded as the policy reads them.
    fn dot(piece: &str) -> Option<bool> {
        let mut dots = 0;
        let mut rest = piece.as_bytes();
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3 && rest[0] == b'%' && rest[1..3].eq_ignore_ascii_case(b"2e") {
                rest = &rest[3..];
            } else {
                return None;
            }
            dots += 1;
        }
        match dots {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }
    if !path.split('/').any(|piece| dot(piece).is_some()) {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    // Whether the resolved path names a directory: its last piece was a dot segment, or
    // it ended with `/` (RFC 3986 5.2.4: `/a/b/..` is `/a/`).
    let mut directory = false;
    for piece in path.split('/') {
        if piece.is_empty() {
            continue;
        }
        match dot(piece) {
            Some(up) => {
                if up {
                    kept.pop();
                }
                directory = true;
            }
            None => {
                kept.push(piece);
                directory = false;
            }
        }
    }
    directory |= path.ends_with('/');
    let mut resolved = String::with_capacity(path.len());
    for piece in &kept {
        resolved.push('/');
        resolved.push_str(piece);
    }
    if resolved.is_empty() || directory {
        resolved.push('/');
    }
    Some(resolved)
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Adds the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `-Host`. Hops the
/// request already lists, on one line or several, are kept in order on one line.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: std::net::IpAddr,
    https: bool,
    original_host: Option<&HeaderValue>,
) {
    let mut forwarded_for = String::new();
    for previous in headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        forwarded_for.push_str(previous);
        forwarded_for.push_str(", ");
    }
    let _ = write!(forwarded_for, "{client}");
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// An origin's response body that ends in an error once no bytes have come for `limit`
/// (the origin's response timeout, which bounds the wait for its head too, as nginx's
/// `proxy_read_timeout` bounds each read): an origin that stalls halfway through a body
/// does not hold the client's connection and the node's task for ever. A timer is armed only
/// while the body waits.
pub struct StallGuard<B> {
    body: B,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The error a stalled origin body ends in.
#[derive(Debug, thiserror::Error)]
#[error("the origin sent nothing for {0:?}")]
pub struct Stalled(pub Duration);

impl<B> StallGuard<B> {
    pub fn new(body: B, limit: Duration) -> StallGuard<B> {
        StallGuard {
            body,
            limit,
            timer: None,
        }
    }
}

impl<B> http_body::Body for StallGuard<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Stalled(limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepack_bundles::plan::Source;

    fn origin(url_host: &str, port: u16, tls: bool, prefix: &str) -> OriginPlan {
        OriginPlan {
            id: 0,
            name: "api".into(),
            url: String::new(),
            tls,
            host: url_host.into(),
            port,
            path_prefix: prefix.into(),
            zone: 0,
            connect_timeout_ms: 1000,
            response_timeout_ms: 1000,
            source: Source {
                file: "edgepack.kdl".into(),
                line: 1,
                column: 1,
            },
        }
    }

    #[test]
    fn origin_uris_keep_prefix_path_and_query() {
        let target = |text: &'static str| Some(PathAndQuery::from_static(text));
        let origin_uri = |origin: &OriginPlan, path_and_query: Option<&PathAndQuery>| {
            OriginTarget::new(origin).unwrap().uri(path_and_query)
        };
        let uri = origin_uri(
            &origin("api.internal", 8443, true, "/v2/"),
            target("/api/x?a=1").as_ref(),
        )
        .unwrap();
        assert_eq!(uri.to_string(), "https://api.internal:8443/v2/api/x?a=1");
        let uri = origin_uri(&origin("api.internal", 80, false, ""), target("/").as_ref()).unwrap();
        assert_eq!(uri.to_string(), "http://api.internal/");
        let uri = origin_uri(&origin("api.internal", 443, true, "/v2"), None).unwrap();
        assert_eq!(uri.to_string(), "https://api.internal/v2/");
        let uri = origin_uri(&origin("::1", 9000, false, ""), target("/a?b").as_ref()).unwrap();
        assert_eq!(uri.to_string(), "http://[::1]:9000/a?b");
        let host = |origin: &OriginPlan| OriginTarget::new(origin).unwrap().host().clone();
        assert_eq!(host(&origin("::1", 9000, false, "")), "[::1]:9000");
        assert_eq!(
            host(&origin("api.internal", 8443, true, "")),
            "api.internal:8443"
        );
        assert_eq!(
            host(&origin("api.internal", 443, true, "/v2")),
            "api.internal"
        );
        let uri = origin_uri(&origin("::1", 80, false, ""), target("/").as_ref()).unwrap();
        assert_eq!(uri.to_string(), "http://[::1]/");
        // Dot segments are resolved as the policy resolved them: never out of the prefix.
        let uri = origin_uri(
            &origin("api.internal", 443, true, "/tenant-a"),
            target("/x/../../tenant-b/%2E%2e/secret?k=1").as_ref(),
        )
        .unwrap();
        assert_eq!(uri.to_string(), "https://api.internal/tenant-a/secret?k=1");
    }

    #[test]
    fn dot_segments_resolve_as_the_policy_reads_them() {
        assert_eq!(resolve_dot_segments("/api/data/x"), None);
        assert_eq!(resolve_dot_segments("/api//data/x/"), None);
        assert_eq!(
            resolve_dot_segments("/a/.../b"),
            None,
            "three dots name a file"
        );
        for (path, resolved) in [
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a//../b", "/b"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b/", "/b/"),
            ("/a%2f..%2fb/../c", "/c"),
            ("/..", "/"),
        ] {
            assert_eq!(
                resolve_dot_segments(path).as_deref(),
                Some(resolved),
                "{path}"
            );
        }
        // The policy reads the resolved path as it read the original: the same segments.
        let segments = |path: &str| {
            let request = edgepack_bundles::request::Request::new("GET", path);
            let mut block = vec![0u8; 64 * 1024];
            let len = edgepack_bundles::wire::encode(&request, &Default::default(), 0, &mut block)
                .expect("encodes");
            edgepack_bundles::wire::decode(&block[..len])
                .expect("decodes")
                .segments
        };
        for path in [
            "/a/b/../c",
            "/a//../b/./c/",
            "/x/%2E%2e/y/.%2E/z",
            "/a%2f..%2fb/../c",
            "/../..",
            "/a/b/%2e",
        ] {
            let resolved = resolve_dot_segments(path).expect("has dot segments");
            assert_eq!(segments(&resolved), segments(path), "{path} → {resolved}");
        }
    }

    #[test]
    fn each_hop_by_hop_header_goes_when_it_is_the_only_one() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut headers = HeaderMap::new();
            headers.insert("accept", HeaderValue::from_static("*/*"));
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.len(), 1, "{name} stayed");
            assert_eq!(headers["accept"], "*/*");
        }
        let mut untouched = HeaderMap::new();
        untouched.insert("accept", HeaderValue::from_static("*/*"));
        untouched.insert("x-keep", HeaderValue::from_static("1"));
        let before = untouched.clone();
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, before);
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarded_headers_come() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        strip_hop_by_hop(&mut headers);
        add_forwarded(
            &mut headers,
            "10.0.0.1".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("edge.example")),
        );
        assert!(headers.get("x-secret").is_none() && headers.get("transfer-encoding").is_none());
        assert_eq!(headers["accept"], "*/*");
        // Every line the client sent, in order, then the peer, on one line.
        assert_eq!(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.7, 10.0.0.1"]
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "edge.example");
    }
}
