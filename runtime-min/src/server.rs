//! The node's processes around requests: listeners (plain or TLS, HTTP/1.1 and HTTP/2), the
//! admin endpoints, watching for new bundles, signals and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::cache;
use crate::config::NodeArgs;
use crate::framing::Watched;
use crate::handler::{Body, full};
use crate::metrics::PullLabels;
use crate::node::{Node, Offer, Trigger};
use crate::registry::{Login, Registry, RegistryError};

/// Marks a request whose head carried both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// Runs the node on this thread until SIGTERM or SIGINT; returns the process's exit status.
///
/// The control tasks (admin endpoints, bundle watching and pulling, signals) run on a
/// runtime of their own on this thread; requests are served by `--workers` threads, each
/// with a single-threaded runtime of its own that accepts connections on a socket of its
/// own ([`bind_workers`]) and keeps its own pool of origin connections. One event loop per
/// thread, as nginx runs one per worker process: a connection, its requests and the origin
/// connections they use stay on one thread, with no scheduler moving tasks between threads
/// (a proxied request served 15–18% more requests/s this way than on tokio's work-stealing
/// runtime with one worker).
pub fn run(args: NodeArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(control(args)),
        Err(error) => {
            eprintln!("edgepack-node: cannot start the runtime: {error}");
            ExitCode::from(2)
        }
    }
}

/// Starts the node, the control tasks and the workers; waits for the shutdown signal and
/// for the workers to drain.
async fn control(args: NodeArgs) -> ExitCode {
    crate::logs::init(args.log_format);
    let node = match Node::new(&args) {
        Ok(node) => node.shared(),
        Err(error) => {
            eprintln!("edgepack-node: {error}");
            return ExitCode::from(2);
        }
    };
    let registry = match &args.pull {
        Some(reference) => match connect_registry(reference, &args) {
            Ok(registry) => Some(registry),
            Err(message) => {
                eprintln!("edgepack-node: --pull {reference}: {message}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let tls = match load_tls(&args) {
        Ok(tls) => Arc::new(ArcSwapOption::from(tls.map(Arc::new))),
        Err(message) => {
            eprintln!("edgepack-node: {message}");
            return ExitCode::from(2);
        }
    };
    let (listeners, admin) = match (
        bind_workers(args.listen, worker_count(&args)),
        TcpListener::bind(args.admin).await,
    ) {
        (Ok(listeners), Ok(admin)) => (listeners, admin),
        (Err(e), _) => {
            eprintln!("edgepack-node: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!(
                "edgepack-node: cannot listen on {} (admin): {e}",
                args.admin
            );
            return ExitCode::from(2);
        }
    };
    let starting = node.clone();
    let active = tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap_or(false);
    if !active {
        tracing::error!(target: "edgepack::node", "no bundle is active: answering 503 until a valid bundle arrives");
    }
    let admin_addr = admin.local_addr().unwrap_or(args.admin);
    tokio::spawn(serve_admin(admin, node.clone()));
    let triggers = watch_bundles(&args);
    let pull_now = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(reload_on(
        triggers,
        node.clone(),
        tls.clone(),
        args.clone(),
        pull_now.clone(),
    ));
    if let (Some(registry), Some(region)) = (registry, args.region.clone()) {
        tokio::spawn(pull_releases(
            node.clone(),
            registry,
            region,
            args.poll_interval(),
            pull_now,
        ));
    }
    let housekeeping = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            housekeeping.ratelimits.housekeeping();
        }
    });
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            crate::logs::flush_access();
        }
    });
    let listen = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(args.listen);
    tracing::info!(
        target: "edgepack::node",
        listen = %listen,
        workers = listeners.len(),
        admin = %admin_addr,
        tls = tls.load().is_some(),
        "serving"
    );
    let workers = match Workers::start_with_tls(listeners, node, tls, &args) {
        Ok(workers) => workers,
        Err(message) => {
            eprintln!("edgepack-node: {message}");
            return ExitCode::from(2);
        }
    };
    shutdown_signal().await;
    tracing::info!(target: "edgepack::node", connections = workers.open_connections(), "shutting down: draining requests in flight");
    let drained = tokio::task::spawn_blocking(move || workers.stop())
        .await
        .unwrap_or(false);
    crate::logs::flush_access();
    if drained {
        ExitCode::SUCCESS
    } else {
        tracing::error!(target: "edgepack::node", "a worker thread failed while draining");
        ExitCode::FAILURE
    }
}

/// How many threads serve requests: `--workers`, or one per CPU.
fn worker_count(args: &NodeArgs) -> usize {
    args.workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
        .max(1)
}

/// Binds one listening socket per worker on `addr`, all with `SO_REUSEPORT`, so the kernel
/// spreads new connections over the workers. (Workers accepting from one shared socket
/// left a burst of connections to whichever woke first: the comparison's 32 keep-alive
/// connections all went to one of two workers.) A plain bind first fails while anything
/// else listens there, so a second node on the same address is refused instead of sharing
/// its traffic. Port 0 picks one free port for all.
pub fn bind_workers(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect()
}

/// The threads serving requests: one per listener [`bind_workers`] gives, each on a
/// single-threaded runtime of its own accepting from its listener. They share the
/// connection limit and drain on their own when stopped.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    connections: Connections,
}

impl Workers {
    /// Starts serving plain HTTP on `listeners` (benches and in-process tools).
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        node: Arc<Node>,
        args: &NodeArgs,
    ) -> Result<Workers, String> {
        Self::start_with_tls(listeners, node, Arc::new(ArcSwapOption::empty()), args)
    }

    /// Starts serving `listeners`, with TLS whenever `tls` holds an acceptor.
    fn start_with_tls(
        listeners: Vec<std::net::TcpListener>,
        node: Arc<Node>,
        tls: Arc<ArcSwapOption<TlsAcceptor>>,
        args: &NodeArgs,
    ) -> Result<Workers, String> {
        let (stop, stopping) = watch::channel(false);
        let connections = Connections::new(args.max_connections);
        let mut workers = Workers {
            threads: Vec::with_capacity(listeners.len()),
            stop,
            connections,
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            let started = listener
                .set_nonblocking(true)
                .map_err(|e| format!("cannot listen: {e}"))
                .and_then(|()| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("cannot start a worker's runtime: {e}"))?;
                    let (node, tls, args) = (node.clone(), tls.clone(), args.clone());
                    let connections = workers.connections.clone();
                    let mut stopping = stopping.clone();
                    std::thread::Builder::new()
                        .name(format!("edgepack-worker-{index}"))
                        .spawn(move || {
                            runtime.block_on(async move {
                                let listener = match TcpListener::from_std(listener) {
                                    Ok(listener) => listener,
                                    Err(error) => {
                                        tracing::error!(target: "edgepack::node", error = %error, "a worker cannot listen");
                                        return;
                                    }
                                };
                                let stop = async move {
                                    let _ = stopping.wait_for(|stop| *stop).await;
                                };
                                serve(listener, node, tls, &args, connections, stop).await;
                            });
                        })
                        .map_err(|e| format!("cannot start a worker thread: {e}"))
                });
            match started {
                Ok(thread) => workers.threads.push(thread),
                Err(message) => {
                    workers.stop();
                    return Err(message);
                }
            }
        }
        Ok(workers)
    }

    /// Connections open now, across the workers.
    pub fn open_connections(&self) -> usize {
        self.connections.max as usize - self.connections.permits.available_permits()
    }

    /// Stops accepting and waits for the workers to drain (each within `--drain-timeout`);
    /// whether every one ended cleanly.
    pub fn stop(self) -> bool {
        let _ = self.stop.send(true);
        self.threads
            .into_iter()
            .map(std::thread::JoinHandle::join)
            .fold(true, |clean, joined| clean & joined.is_ok())
    }
}

/// The connection limit, shared by every worker: each open connection holds a permit.
#[derive(Clone)]
struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
}

impl Connections {
    fn new(max_connections: usize) -> Connections {
        let max = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX);
        Connections {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }
}

/// Accepts connections until `shutdown` completes, then drains the ones it accepted (and
/// waits, within the drain timeout, for every connection under `connections` to finish).
async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    args: &NodeArgs,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_timeout)
        .max_buf_size(args.max_header_bytes.max(8192))
        .max_headers(args.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(args.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let (closing, closing_watch) = watch::channel(false);
    let Connections {
        permits,
        max: max_connections,
    } = connections;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(target: "edgepack::node", error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let builder = builder.clone();
        let acceptor = tls.load_full();
        let closing = closing_watch.clone();
        let (header_timeout, idle_timeout) = (args.header_timeout, args.idle_timeout);
        let max_head = args.max_header_bytes;
        tokio::spawn(async move {
            let _permit = permit;
            node.metrics.connections.inc();
            match acceptor {
                None => {
                    let (io, flags) = Watched::new(stream, max_head);
                    let service = request_service(node.clone(), peer, false, flags.clone());
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    drive(connection, &flags, closing, idle_timeout).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let (io, flags) = Watched::new(tls_stream, max_head);
                            let service = request_service(node.clone(), peer, true, flags.clone());
                            let connection =
                                builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                            drive(connection, &flags, closing, idle_timeout).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(target: "edgepack::node", peer = %peer, error = %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(target: "edgepack::node", peer = %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            node.metrics.connections.dec();
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it is done: holding them all means drained.
    if tokio::time::timeout(args.drain_timeout, permits.acquire_many(max_connections))
        .await
        .is_err()
    {
        tracing::warn!(target: "edgepack::node", "drain timeout: closing the remaining connections");
    }
}

/// Serves one connection until it ends, closing it gracefully when the node shuts down or
/// when it has been idle (no request in flight, no bytes moving) for `idle_timeout`.
async fn drive<C>(
    connection: C,
    flags: &crate::framing::Connection,
    mut closing: watch::Receiver<bool>,
    idle_timeout: Duration,
) where
    C: std::future::Future + GracefulConnection,
{
    tokio::pin!(connection);
    let mut idle_check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    let mut idle = flags.idle_watch();
    let mut closed = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = closing.changed(), if !closed => {
                closed = true;
                connection.as_mut().close_gracefully();
            }
            _ = idle_check.tick(), if !closed => {
                if flags.idle(&mut idle) >= idle_timeout {
                    closed = true;
                    connection.as_mut().close_gracefully();
                }
            }
        }
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait GracefulConnection {
    fn close_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The service of one connection: each request handled by `node`, numbered so the framing
/// watcher's flags line up. Its future lives in the slot hyper keeps per connection, not in
/// a box of its own per request.
fn request_service(
    node: Arc<Node>,
    peer: SocketAddr,
    https: bool,
    flags: Arc<crate::framing::Connection>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> {
    let counter = AtomicU64::new(0);
    service_fn(move |mut request: Request<Incoming>| {
        let index = counter.fetch_add(1, Ordering::Relaxed);
        if request.version() < http::Version::HTTP_2 && flags.is_ambiguous(index) {
            request.extensions_mut().insert(AmbiguousFraming);
        }
        let node = node.clone();
        let in_flight = flags.start_request();
        async move {
            let response = node.handle(request, peer, https).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    })
}

/// Waits for SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `/metrics`, `/healthz` and `POST /cache/purge?host=H&prefix=P`.
async fn serve_admin(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(admin_response(&node, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response<B>(node: &Node, request: &Request<B>) -> Response<Body> {
    let (status, content_type, body) = match request.uri().path() {
        "/cache/purge" if request.method() != Method::POST => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "purge with POST, e.g. curl -X POST 'http://ADMIN/cache/purge?host=www.example.com&prefix=/blog/'\n"
                .to_string(),
        ),
        "/cache/purge" => {
            let query = request.uri().query().unwrap_or_default();
            let (mut host, mut prefix) = (None, String::from("/"));
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                match &*name {
                    "host" => host = Some(value.into_owned()),
                    "prefix" => prefix = value.into_owned(),
                    _ => {}
                }
            }
            let purged = node.cache.purge(&cache::Purge {
                host: host.as_deref(),
                prefix: &prefix,
            });
            tracing::info!(target: "edgepack::node", host = host.as_deref().unwrap_or("*"), prefix = %prefix, purged, "cache purged");
            (
                StatusCode::OK,
                "application/json",
                json!({ "purged": purged, "host": host, "prefix": prefix }).to_string(),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            node.metrics.render(),
        ),
        "/healthz" => match node.active.load_full() {
            Some(active) => (
                StatusCode::OK,
                "application/json",
                json!({
                    "status": "ok",
                    "region": active.manifest.region,
                    "version": active.manifest.version,
                    "sha256": active.sha256,
                    "active_for_s": active.activated_at.elapsed().as_secs(),
                })
                .to_string(),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json!({ "status": "no bundle active" }).to_string(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or POST /cache/purge\n".to_string(),
        ),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A registry client for `--pull`, with the credentials the flags or the Docker
/// configuration give.
fn connect_registry(reference: &str, args: &NodeArgs) -> Result<Registry, String> {
    let password = match &args.registry_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--registry-password-file {}: {e}", path.display()))?
                .trim_end()
                .to_string(),
        ),
        None => None,
    };
    let login = Login {
        username: args.registry_user.clone(),
        password,
    };
    Registry::connect(reference, &login).map_err(|e| e.to_string())
}

/// A whole look at the registry (resolve, manifests, bundle) may take this long.
const PULL_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Looks at the release reference every `interval` (and at once on `pull_now`, which also
/// retries a refused release) and offers this region's bundle when the reference has moved.
/// An unreachable registry or a bad release changes nothing: the active bundle keeps
/// serving.
async fn pull_releases(
    node: Arc<Node>,
    registry: Registry,
    region: String,
    interval: Duration,
    pull_now: Arc<tokio::sync::Notify>,
) {
    let reference = registry.reference();
    // The release last looked at, so an unchanged or refused one is not fetched again.
    let mut seen: Option<String> = None;
    let mut failing = false;
    // Whether this look was asked for by SIGHUP: a refused bundle is then tried again.
    let mut forced = false;
    loop {
        let looked = tokio::time::timeout(PULL_TIME_LIMIT, async {
            let release = registry.resolve().await?;
            if seen.as_deref() == Some(release.as_str()) {
                return Ok((release, None));
            }
            let pulled = registry
                .pull(&region, Some(&release), &node.open_limits())
                .await;
            match pulled {
                Ok(pulled) => Ok((release, Some(Ok(pulled)))),
                // A release that is there but unusable is not asked for again.
                Err(
                    error @ (RegistryError::NoRegion { .. }
                    | RegistryError::NotARelease { .. }
                    | RegistryError::TooLarge { .. }),
                ) => Ok((release, Some(Err(error)))),
                Err(error) => Err(error),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(RegistryError::Client(format!(
                "no answer within {}s",
                PULL_TIME_LIMIT.as_secs()
            )))
        });
        let result = match looked {
            Ok((_, None)) => "unchanged",
            Ok((release, Some(pulled))) => {
                let origin = format!("{reference}@{release}");
                seen = Some(release);
                match pulled {
                    Ok(pulled) => {
                        let node = node.clone();
                        let trigger = if forced {
                            Trigger::Signal
                        } else {
                            Trigger::Pull
                        };
                        let _ = tokio::task::spawn_blocking(move || {
                            node.offer(&pulled.bytes, &Offer::outside(&origin, trigger))
                        })
                        .await;
                        "fetched"
                    }
                    Err(error) => {
                        tracing::error!(target: "edgepack::activation", trigger = "pull", release = %origin, error = %error, "release refused; the active bundle keeps serving");
                        "refused"
                    }
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(target: "edgepack::node", reference = %reference, error = %error, "cannot reach the registry; the active bundle keeps serving");
                }
                failing = true;
                node.metrics
                    .registry_polls
                    .get_or_create(&PullLabels { result: "error" })
                    .inc();
                forced = wait_or_signal(interval, &pull_now).await;
                if forced {
                    seen = None;
                }
                continue;
            }
        };
        if failing {
            tracing::info!(target: "edgepack::node", reference = %reference, "the registry answers again");
            failing = false;
        }
        node.metrics
            .registry_polls
            .get_or_create(&PullLabels { result })
            .inc();
        forced = wait_or_signal(interval, &pull_now).await;
        if forced {
            seen = None;
        }
    }
}

/// Sleeps `interval`, or less when notified; returns whether it was notified.
async fn wait_or_signal(interval: Duration, notify: &tokio::sync::Notify) -> bool {
    tokio::select! {
        () = tokio::time::sleep(interval) => false,
        () = notify.notified() => true,
    }
}

/// File-system events, a poll timer and SIGHUP, as activation triggers (`--bundle`); with
/// `--pull`, SIGHUP alone (a look at the registry now, and the TLS certificate).
fn watch_bundles(args: &NodeArgs) -> mpsc::Receiver<Trigger> {
    let (sender, receiver) = mpsc::channel(16);
    signal_triggers(sender.clone());
    let Some(bundle) = &args.bundle else {
        return receiver;
    };
    let directory = if bundle.is_dir() {
        bundle.clone()
    } else {
        bundle
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let events = sender.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        let Ok(event) = event else { return };
        let relevant = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
        ) && event
            .paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "edgepack"));
        if relevant {
            let _ = events.try_send(Trigger::Watch);
        }
    });
    match watcher {
        Ok(mut watcher) => {
            use notify::Watcher;
            match watcher.watch(&directory, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    // The watcher lives as long as the node.
                    std::mem::forget(watcher);
                }
                Err(error) => {
                    tracing::warn!(target: "edgepack::node", directory = %directory.display(), error = %error, "cannot watch the bundle directory; polling only");
                }
            }
        }
        Err(error) => {
            tracing::warn!(target: "edgepack::node", error = %error, "no file-system watcher; polling only");
        }
    }
    let interval = args.poll_interval();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if sender.send(Trigger::Poll).await.is_err() {
                return;
            }
        }
    });
    receiver
}

/// SIGHUP as an activation trigger.
fn signal_triggers(sender: mpsc::Sender<Trigger>) {
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            if sender.send(Trigger::Signal).await.is_err() {
                return;
            }
        }
    });
}

/// Activates bundles as triggers arrive, one at a time, off the async workers.
async fn reload_on(
    mut triggers: mpsc::Receiver<Trigger>,
    node: Arc<Node>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    args: NodeArgs,
    pull_now: Arc<tokio::sync::Notify>,
) {
    while let Some(trigger) = triggers.recv().await {
        if trigger == Trigger::Signal && args.pull.is_some() {
            pull_now.notify_one();
        }
        if trigger == Trigger::Signal && args.tls_cert.is_some() {
            match load_tls(&args) {
                Ok(acceptor) => {
                    tls.store(acceptor.map(Arc::new));
                    tracing::info!(target: "edgepack::node", "TLS certificate reloaded");
                }
                Err(message) => {
                    tracing::error!(target: "edgepack::node", error = %message, "TLS certificate not reloaded; keeping the current one");
                }
            }
        }
        let node = node.clone();
        let _ = tokio::task::spawn_blocking(move || node.reload(trigger)).await;
    }
}

/// The TLS acceptor for `--tls-cert` and `--tls-key` (HTTP/2 and HTTP/1.1 by ALPN).
fn load_tls(args: &NodeArgs) -> Result<Option<TlsAcceptor>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
