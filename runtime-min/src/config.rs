//! The node's settings: addresses, trusted keys, limits, secrets. Nothing about routes,
//! rules or caching: those come from the bundle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The edgepack edge runtime: verifies signed bundles and enforces them on HTTP traffic.
///
/// The node takes no policy configuration of its own: routes, rules, limits and caching
/// come from the bundle, which it verifies against the trusted keys, activates atomically
/// and replaces whenever a valid bundle with a higher version appears at `--bundle` (the
/// directory is watched; SIGHUP forces a look) or in the release `--pull` names. Before a
/// bundle serves, its `test` blocks run against it as golden requests; after, if the bundle
/// sets a `rollout` window, the node returns to the previous bundle when its error rate
/// crosses the bundle's threshold. A bundle that fails any check is refused, logged and
/// counted, and the active one keeps serving. SIGTERM drains and exits 0.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "edgepack-node",
    version,
    after_help = "Examples:
  edgepack-node --bundle dist/eu-west.edgepack --trust keys/ci.pub \\
    --listen 0.0.0.0:8080 --admin 127.0.0.1:9090 --state-dir /var/lib/edgepack
  edgepack-node --pull registry.example.com/team/api:prod --region eu-west --poll 30s \\
    --trust keys/ci.pub --state-dir /var/lib/edgepack"
)]
pub struct NodeArgs {
    /// The bundle: a `.edgepack` file, or a directory holding one (or `<region>.edgepack`
    /// with `--region`).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "pull",
        conflicts_with = "pull"
    )]
    pub bundle: Option<PathBuf>,

    /// Pull this region's bundle from a release in an OCI registry (`edgepack push`), e.g.
    /// `registry.example.com/team/api:prod`, whenever the reference moves. Plain HTTP only
    /// for a registry on this machine. Credentials: --registry-user and
    /// --registry-password-file, else the Docker configuration (`~/.docker/config.json`).
    #[arg(long, value_name = "REFERENCE", requires = "region")]
    pub pull: Option<String>,

    /// User name for the registry `--pull` reads.
    #[arg(long, value_name = "USER", requires = "registry_password_file")]
    pub registry_user: Option<String>,

    /// File holding the password or token for `--registry-user`.
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<PathBuf>,

    /// Public keys whose signatures are trusted (repeatable; see `edgepack keygen`).
    #[arg(long, value_name = "PUBLIC_KEY", required = true)]
    pub trust: Vec<PathBuf>,

    /// Where to serve traffic.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where to serve `/metrics`, `/healthz` and `POST /cache/purge` (keep it private).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,

    /// Directory for the version high-water mark and the last good bundle; without it a
    /// restart forgets which versions were seen.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Accept only bundles for this region (by default: the region of the first bundle
    /// activated, remembered in the state directory).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Refuse bundles that carry no expiry time.
    #[arg(long)]
    pub require_expiry: bool,

    /// Send an origin's traffic to another address, as curl does: `HOST:PORT=ADDR:PORT`
    /// (repeatable). TLS still checks the certificate for HOST.
    #[arg(long, value_name = "HOST:PORT=ADDR", value_parser = parse_resolve)]
    pub resolve: Vec<(String, u16, SocketAddr)>,

    /// PEM file of CA certificates trusted for `https` origins, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub origin_ca: Option<PathBuf>,

    /// PEM certificate chain for TLS on `--listen` (with `--tls-key`; reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS on `--listen`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File holding the secret key residency transforms pseudonymize with (HMAC-SHA256).
    /// Also read from the environment variable EDGEPACK_PSEUDONYMIZE_KEY. Without one,
    /// headers the policy pseudonymizes are dropped instead.
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key_file: Option<PathBuf>,

    /// An HS shared secret a policy's JWT provider names (`secret "NAME"`): `NAME=FILE`, the
    /// file holding the secret's bytes (a trailing newline is not part of it; 32 to 4096
    /// bytes). Repeatable. Also read from EDGEPACK_JWT_SECRET_<NAME> (upper case, `-` as `_`).
    /// Read when a bundle is activated; a bundle naming a secret the node lacks is refused.
    #[arg(long, value_name = "NAME=FILE", value_parser = parse_jwt_secret)]
    pub jwt_secret: Vec<(String, PathBuf)>,

    /// Largest request body accepted (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 20)]
    pub max_body: u64,

    /// Largest request head (request line and headers) accepted.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10)]
    pub max_header_bytes: usize,

    /// Most request headers accepted.
    #[arg(long, value_name = "COUNT", default_value_t = 100)]
    pub max_headers: usize,

    /// Time a client has to send a request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request body.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a connection with no request in flight and no bytes moving stays open. An
    /// HTTP/1 connection waiting for its next request head is also bounded by --header-timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time one policy decision may take before it is abandoned (the request gets 500).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub decide_timeout: Duration,

    /// Most connections served at once; more wait to be accepted.
    #[arg(long, value_name = "COUNT", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Memory the response cache may use.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub cache_bytes: u64,

    /// Largest response the cache stores.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub cache_max_entry: u64,

    /// Most distinct keys each rate limit tracks: every 10 s keys back to their full
    /// allowance are dropped, and a limit still tracking more starts its counts over.
    #[arg(long, value_name = "COUNT", default_value_t = 100_000)]
    pub ratelimit_keys: usize,

    /// Edge-function instances alive at once (one per request a function is serving); the
    /// instance pool is reserved up front when the first bundle with functions arrives.
    #[arg(long, value_name = "COUNT", default_value_t = 1000)]
    pub function_instances: u32,

    /// The most memory a bundle may give one edge function; a bundle asking for more is
    /// refused. Each instance slot reserves this much address space (not memory).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub function_memory_max: u64,

    /// Threads serving requests, each with its own event loop and origin connections
    /// (default: one per CPU).
    #[arg(long, value_name = "COUNT")]
    pub workers: Option<usize>,

    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How often to look for a new bundle: at `--bundle` even without a file-system event
    /// (default 2s), or at the `--pull` reference in the registry (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll: Option<Duration>,

    /// Do not write the access log (one JSON line per request on stdout).
    #[arg(long)]
    pub no_access_log: bool,

    /// Log format on stderr: `json` (one object per line) or `text`.
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl NodeArgs {
    /// How often to look for a new bundle.
    pub fn poll_interval(&self) -> Duration {
        let default = if self.pull.is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(2)
        };
        self.poll.unwrap_or(default).max(Duration::from_millis(100))
    }

    /// `--resolve` as a lookup table.
    pub fn resolve_map(&self) -> HashMap<(String, u16), SocketAddr> {
        self.resolve
            .iter()
            .map(|(host, port, addr)| ((host.to_ascii_lowercase(), *port), *addr))
            .collect()
    }
}

/// `api.internal:8443=127.0.0.1:9000`.
fn parse_resolve(text: &str) -> Result<(String, u16, SocketAddr), String> {
    let (from, to) = text
        .split_once('=')
        .ok_or("expected HOST:PORT=ADDR:PORT, e.g. api.internal:8443=127.0.0.1:9000")?;
    let (host, port) = from
        .rsplit_once(':')
        .ok_or("expected HOST:PORT before `=`")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port number"))?;
    let addr: SocketAddr = to
        .parse()
        .map_err(|_| format!("`{to}` is not an address with a port, e.g. 127.0.0.1:9000"))?;
    if host.is_empty() {
        return Err("the host before `:PORT=` is empty".into());
    }
    Ok((host.to_string(), port, addr))
}

fn parse_jwt_secret(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = text
        .split_once('=')
        .ok_or("expected NAME=FILE, e.g. partner-hmac=/etc/edgepack/partner-hmac")?;
    if name.is_empty() || file.is_empty() {
        return Err("expected NAME=FILE, e.g. partner-hmac=/etc/edgepack/partner-hmac".into());
    }
    Ok((name.to_string(), PathBuf::from(file)))
}

/// `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let millis = match unit {
        "ms" => number,
        "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("unknown unit `{unit}`: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolve_entries_and_durations() {
        let (host, port, addr) = parse_resolve("api.internal:8443=127.0.0.1:9000").unwrap();
        assert_eq!((host.as_str(), port), ("api.internal", 8443));
        assert_eq!(addr, "127.0.0.1:9000".parse().unwrap());
        assert!(parse_resolve("api.internal=127.0.0.1:9000").is_err());
        assert!(parse_resolve("api.internal:x=127.0.0.1:9000").is_err());
        assert!(parse_resolve("api.internal:1=localhost").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10d").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        NodeArgs::command().debug_assert();
    }

    #[test]
    fn help_shows_each_example_command_on_its_own_lines() {
        use clap::CommandFactory;
        let help = NodeArgs::command().render_long_help().to_string();
        let starts: Vec<&str> = help
            .lines()
            .map(str::trim_start)
            .filter(|line| line.starts_with("edgepack-node --"))
            .collect();
        assert_eq!(starts.len(), 2, "{help}");
    }
}
