//! An HTTP request as edgepack sees it, independent of any HTTP library.
//!
//! [`RequestParts`] is what a request must offer to be decided on: the node implements it
//! over hyper's request, and [`Request`] is an owned implementation for tests, `explain` and
//! `edgepack test`. Nothing here interprets a policy.

use std::net::{IpAddr, Ipv6Addr};

/// What the policy engine needs to know about a request.
pub trait RequestParts {
    fn method(&self) -> &str;
    /// The protocol as a request line names it: `HTTP/1.1`, `HTTP/2.0`.
    fn protocol(&self) -> &str;
    /// The path as received, percent-encoded, without the query.
    fn path(&self) -> &[u8];
    /// The query as received, without the `?`.
    fn query(&self) -> &[u8];
    /// The `Host` (or `:authority`) as received, port included.
    fn host(&self) -> &[u8];
    /// The address of the peer that opened the connection.
    fn peer(&self) -> IpAddr;
    /// Calls `f` with every header, names in lower case, in the order received.
    fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8]));
    /// How many headers [`RequestParts::for_each_header`] gives.
    fn header_count(&self) -> usize {
        let mut count = 0;
        self.for_each_header(&mut |_, _| count += 1);
        count
    }
    /// The first bytes of the body (as much as the node read, up to the policy's limit).
    fn body(&self) -> &[u8];
    /// The body's full length, when known; at least `body().len()`.
    fn body_len(&self) -> u64;
}

/// An owned request: built by tests, `edgepack explain` and `edgepack test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub protocol: String,
    pub path: Vec<u8>,
    pub query: Vec<u8>,
    pub host: Vec<u8>,
    pub peer: IpAddr,
    /// Names in lower case.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// `GET target` from a loopback peer with no headers; `target` is a path with an
    /// optional `?query`.
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        Request {
            method: method.to_string(),
            protocol: "HTTP/1.1".to_string(),
            path: path.as_bytes().to_vec(),
            query: query.as_bytes().to_vec(),
            host: b"localhost".to_vec(),
            peer: IpAddr::V6(Ipv6Addr::LOCALHOST),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((
            name.to_ascii_lowercase().into_bytes(),
            value.as_ref().to_vec(),
        ));
        self
    }

    pub fn host(mut self, host: &str) -> Request {
        self.host = host.as_bytes().to_vec();
        self
    }

    pub fn peer(mut self, peer: IpAddr) -> Request {
        self.peer = peer;
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = body.as_ref().to_vec();
        self
    }
}

impl RequestParts for Request {
    fn method(&self) -> &str {
        &self.method
    }

    fn protocol(&self) -> &str {
        &self.protocol
    }

    fn path(&self) -> &[u8] {
        &self.path
    }

    fn query(&self) -> &[u8] {
        &self.query
    }

    fn host(&self) -> &[u8] {
        &self.host
    }

    fn peer(&self) -> IpAddr {
        self.peer
    }

    fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in &self.headers {
            f(name, value);
        }
    }

    fn header_count(&self) -> usize {
        self.headers.len()
    }

    fn body(&self) -> &[u8] {
        &self.body
    }

    fn body_len(&self) -> u64 {
        self.body.len() as u64
    }
}

/// An address as the 16 bytes of IPv6 (IPv4 mapped as `::ffff:a.b.c.d`), the one form the
/// policy module compares.
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address back from its 16 bytes (mapped IPv4 shown as IPv4).
pub fn ip_from_bytes(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
