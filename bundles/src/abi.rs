//! The ABI between a compiled policy module and its host (ABI version 2).
//!
//! A policy module exports its memory, `decide`, and globals saying where the request and
//! decision blocks live, and imports nothing unless its WAF uses libinjection (`import`). The host writes a request block (see `wire`) at
//! `request_base`, calls `decide(len)`, and reads the decision block at `decision_base`.
//! The code generator and the node both use these constants; docs/abi.md describes them.

use std::net::IpAddr;

use serde::Serialize;

use crate::request::ip_from_bytes;

pub const ABI_VERSION: u32 = 3;

/// Names of the module's exports.
pub mod export {
    pub const MEMORY: &str = "memory";
    /// `decide(request_len: i32) -> i32`: 0 when a decision was written, else an error code.
    pub const DECIDE: &str = "decide";
    /// `i32` globals.
    pub const ABI_VERSION: &str = "abi_version";
    pub const REQUEST_BASE: &str = "request_base";
    pub const REQUEST_CAPACITY: &str = "request_capacity";
    pub const DECISION_BASE: &str = "decision_base";
    /// How many body bytes the policy inspects: the host writes at most this many.
    pub const BODY_LIMIT: &str = "body_limit";
}

/// The host functions a policy module may import. A module imports only what its policy
/// uses: most import nothing.
pub mod import {
    pub const MODULE: &str = "edgepack";
    /// `detect(kind: i32, ptr: i32, len: i32) -> i32`: 1 when libinjection finds `kind`
    /// (`DetectKind::code`: 0 SQL injection, 1 XSS) in the `len` bytes at `ptr` of the
    /// module's memory, else 0. See `crate::detect`.
    pub const DETECT: &str = "detect";
}

/// A module's request buffer holds this much besides the body bytes it inspects.
pub const REQUEST_CAPACITY_BASE: u32 = 256 * 1024;

/// Error codes `decide` returns instead of 0.
pub mod decide_error {
    /// The request block's version is not this ABI's.
    pub const BAD_ABI: i32 = 1;
    /// The request block's length exceeds the request capacity.
    pub const TOO_LARGE: i32 = 2;
}

/// Offsets in the request block's fixed header. Lists are (offset, count) pairs; offsets are
/// relative to the block's start.
pub mod req {
    pub const ABI: u32 = 0;
    pub const METHOD: u32 = 4;
    pub const FLAGS: u32 = 8;
    /// 16 bytes, IPv6 or IPv4-mapped.
    pub const PEER: u32 = 12;
    /// (offset, length) of the raw path, without the query.
    pub const PATH: u32 = 28;
    /// (offset, length) of the raw query, without `?`. When there is one it follows the
    /// path after a `?`, so the path's offset with both lengths plus one spans the URI.
    pub const QUERY: u32 = 36;
    /// (offset, length) of the host: lower case, no port, no trailing dot.
    pub const HOST: u32 = 44;
    /// (offset, count) of path segments, records of (offset, length): percent-decoded,
    /// empty and `.` segments dropped, `..` applied.
    pub const SEGMENTS: u32 = 52;
    /// (offset, count) of headers, records of (name offset, name length, value offset,
    /// value length); names in lower case.
    pub const HEADERS: u32 = 60;
    /// (offset, count) of arguments, records like headers: query first, then body.
    pub const ARGS: u32 = 68;
    /// (offset, count) of cookies, records like headers.
    pub const COOKIES: u32 = 76;
    /// (offset, count) of `X-Forwarded-For` hops, left to right, records of 16 address bytes
    /// and a word that is 1 when the hop is an address.
    pub const XFF: u32 = 84;
    /// (offset, length) of the body bytes given (at most the module's body limit).
    pub const BODY: u32 = 92;
    /// The body's full length (saturating).
    pub const BODY_TOTAL: u32 = 100;
    /// How many of the arguments came from the query.
    pub const QUERY_ARGS: u32 = 104;
    /// The method code named by `Access-Control-Request-Method` (0 when absent or unknown).
    pub const PREFLIGHT_METHOD: u32 = 108;
    /// (offset, length) of the request line as text: method, space, path, `?` and query
    /// (when there is one), space, protocol. The path and query fields point into it.
    pub const REQUEST_LINE: u32 = 112;
    /// Length of the method at the start of the request line.
    pub const METHOD_LEN: u32 = 120;
    /// Length of the protocol at the end of the request line.
    pub const PROTOCOL_LEN: u32 = 124;
    /// (offset, count) of a `multipart/form-data` body's file parts, records like headers:
    /// the form field's name, the file's name as sent.
    pub const FILES: u32 = 128;
    /// (offset, count) of a `multipart/form-data` body's part headers, records like
    /// headers: the part's name, the header line as `Name: value`.
    pub const PART_HEADERS: u32 = 136;
    pub const HEADER_SIZE: u32 = 144;
}

/// Bits of the request block's flags word.
pub mod flag {
    pub const HAS_AUTHORIZATION: u32 = 1;
    pub const HAS_BEARER: u32 = 2;
    pub const HAS_COOKIE: u32 = 4;
    /// An `Access-Control-Request-Method` header is present.
    pub const HAS_ACRM: u32 = 8;
    /// `OPTIONS` with `Access-Control-Request-Method`: a CORS preflight.
    pub const PREFLIGHT: u32 = 16;
    /// The body is longer than the bytes given.
    pub const BODY_TRUNCATED: u32 = 32;
}

/// Method codes.
pub mod method {
    pub const OTHER: u32 = 0;
    pub const GET: u32 = 1;
    pub const HEAD: u32 = 2;
    pub const POST: u32 = 3;
    pub const PUT: u32 = 4;
    pub const DELETE: u32 = 5;
    pub const PATCH: u32 = 6;
    pub const OPTIONS: u32 = 7;
    pub const CONNECT: u32 = 8;
    pub const TRACE: u32 = 9;

    pub const NAMES: [&str; 10] = [
        "OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];

    /// The code of a method name; `OTHER` for names outside the standard ones.
    pub fn code(name: &str) -> u32 {
        NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(OTHER, |i| i as u32)
    }

    /// The bit of a method in a route's method mask.
    pub fn bit(code: u32) -> u32 {
        1 << code
    }

    /// The names of the methods in a mask, in code order.
    pub fn names(mask: u32) -> impl Iterator<Item = &'static str> {
        (1..NAMES.len())
            .filter(move |&code| mask & bit(code as u32) != 0)
            .map(|code| NAMES[code])
    }
}

/// "No id": routes, edit sets and the like that are absent.
pub const NONE: u32 = u32::MAX;

/// Offsets in the decision block.
pub mod dec {
    /// 1: a final answer; 2: a list of effects.
    pub const OUTCOME: u32 = 0;
    pub const ANSWER: u32 = 4;
    pub const STATUS: u32 = 8;
    pub const ANSWER_ARG: u32 = 12;
    pub const ROUTE: u32 = 16;
    pub const WAF_SCORE: u32 = 20;
    /// Two ASCII bytes, or 0 when unknown.
    pub const COUNTRY: u32 = 24;
    pub const DATA_ZONE: u32 = 28;
    pub const FLAGS: u32 = 32;
    pub const CLIENT_IP: u32 = 36;
    /// The header edit set for the response (final answers and effects alike).
    pub const EDITS: u32 = 52;
    pub const RULES_COUNT: u32 = 56;
    pub const EFFECTS_COUNT: u32 = 64;
    pub const LOCATION_LEN: u32 = 72;
    pub const RULES: u32 = 128;
    pub const MAX_RULES: u32 = 256;
    pub const EFFECTS: u32 = RULES + 4 * MAX_RULES;
    pub const MAX_EFFECTS: u32 = 32;
    pub const LOCATION: u32 = EFFECTS + 8 * MAX_EFFECTS;
    pub const MAX_LOCATION: u32 = 4096;
    pub const SIZE: u32 = LOCATION + MAX_LOCATION;

    pub const OUTCOME_FINAL: u32 = 1;
    pub const OUTCOME_EFFECTS: u32 = 2;

    /// Decision flags.
    pub const FLAG_STRIP_COUNTRY_HEADER: u32 = 1;
    /// The WAF score reached the threshold but the WAF only logs.
    pub const FLAG_WAF_LOGGED: u32 = 2;
    /// The response may be cached but this request bypasses the cache (credentials).
    pub const FLAG_CACHE_BYPASSED: u32 = 4;
}

/// Answer kinds of final decisions.
pub mod answer {
    /// `respond`: argument = response id.
    pub const RESPOND: u32 = 1;
    /// `block`.
    pub const BLOCK: u32 = 2;
    pub const NOT_FOUND: u32 = 3;
    /// Refused by a geo list.
    pub const GEO_BLOCKED: u32 = 4;
    pub const WAF_BLOCKED: u32 = 5;
    /// No token where one is required: argument = JWT provider id.
    pub const UNAUTHORIZED: u32 = 6;
    /// CORS preflight: argument = CORS policy id; status 204 when the origin and method
    /// are allowed, else 403.
    pub const PREFLIGHT: u32 = 7;
    /// `redirect`: the location is in the decision block.
    pub const REDIRECT: u32 = 8;
    /// The body is over the WAF's limit and the policy blocks such bodies.
    pub const BODY_TOO_LARGE: u32 = 9;
    /// Routes take the path but not the method: argument = the methods they take, one bit
    /// per method code (`method::bit`).
    pub const METHOD_NOT_ALLOWED: u32 = 10;
}

/// Effect kinds; each effect is (kind, argument).
pub mod effect {
    pub const VERIFY_JWT: u32 = 1;
    pub const RATE_LIMIT: u32 = 2;
    /// Argument: the route id (its cache policy is in the plan).
    pub const CACHE: u32 = 3;
    /// Argument: edit set id; request edits apply before the action.
    pub const EDIT_HEADERS: u32 = 4;
    /// Argument: the data zone whose transforms apply.
    pub const RESIDENCY: u32 = 5;
    /// Argument: CORS policy id; the request's origin is allowed.
    pub const CORS: u32 = 6;
    pub const PROXY: u32 = 7;
    pub const FUNCTION: u32 = 8;
    /// Argument: response id.
    pub const RESPOND: u32 = 9;
    /// Argument: route id; the location is in the decision block.
    pub const REDIRECT: u32 = 10;
    /// Argument: route id (its status is in the plan).
    pub const BLOCK: u32 = 11;
}

/// A final answer, given without contacting anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Respond {
        response: u32,
        status: u16,
    },
    Block {
        status: u16,
    },
    NotFound {
        status: u16,
    },
    GeoBlocked {
        status: u16,
    },
    WafBlocked {
        status: u16,
    },
    Unauthorized {
        jwt: u32,
        status: u16,
    },
    Preflight {
        cors: u32,
        status: u16,
    },
    Redirect {
        status: u16,
        location: String,
    },
    BodyTooLarge {
        status: u16,
    },
    /// `allow`: the methods routes of this path take, one bit per method code.
    MethodNotAllowed {
        allow: u32,
        status: u16,
    },
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Respond { status, .. }
            | Answer::Block { status }
            | Answer::NotFound { status }
            | Answer::GeoBlocked { status }
            | Answer::WafBlocked { status }
            | Answer::Unauthorized { status, .. }
            | Answer::Preflight { status, .. }
            | Answer::Redirect { status, .. }
            | Answer::BodyTooLarge { status }
            | Answer::MethodNotAllowed { status, .. } => *status,
        }
    }
}

/// One step for the node to carry out, in order, stopping at the first that answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", content = "id", rename_all = "snake_case")]
pub enum Effect {
    VerifyJwt(u32),
    RateLimit(u32),
    Cache(u32),
    EditHeaders(u32),
    Residency(u32),
    Cors(u32),
    Proxy(u32),
    Function(u32),
    Respond(u32),
    Redirect(u32),
    Block(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Final(Answer),
    Effects(Vec<Effect>),
}

/// A two-letter country code, as the decision reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CountryCode(pub [u8; 2]);

impl CountryCode {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for CountryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the policy decided about one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// The route that took the request.
    pub route: Option<u32>,
    /// WAF rules that fired, ascending (at most `dec::MAX_RULES`).
    pub rules: Vec<u32>,
    pub waf_score: u32,
    /// The client's country, when known.
    pub country: Option<CountryCode>,
    /// The zone of the client's country.
    pub data_zone: u32,
    pub client_ip: IpAddr,
    pub flags: u32,
    /// The header edit set for the response.
    pub edits: Option<u32>,
    /// The redirect target when a `Redirect` effect ends the effects.
    pub location: Option<String>,
}

fn push_location(out: &mut String, block: &[u8], len: u32) {
    let len = len.min(dec::MAX_LOCATION) as usize;
    let start = dec::LOCATION as usize;
    out.push_str(&String::from_utf8_lossy(&block[start..start + len]));
}

/// Why a decision block could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("decision block too short")]
    Truncated,
    #[error("unknown outcome {0}")]
    Outcome(u32),
    #[error("unknown answer kind {0}")]
    Answer(u32),
    #[error("unknown effect kind {0}")]
    Effect(u32),
}

fn opt(id: u32) -> Option<u32> {
    (id != NONE).then_some(id)
}

impl Default for Decision {
    fn default() -> Decision {
        Decision {
            outcome: Outcome::Effects(Vec::new()),
            route: None,
            rules: Vec::new(),
            waf_score: 0,
            country: None,
            data_zone: 0,
            client_ip: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            flags: 0,
            edits: None,
            location: None,
        }
    }
}

impl Decision {
    /// Reads a decision block as the module wrote it.
    pub fn read(block: &[u8]) -> Result<Decision, DecisionError> {
        let mut decision = Decision::default();
        decision.read_into(block)?;
        Ok(decision)
    }

    /// Reads a decision block into `self`, reusing its lists: a node deciding request after
    /// request with one `Decision` allocates nothing once the lists have grown.
    pub fn read_into(&mut self, block: &[u8]) -> Result<(), DecisionError> {
        if block.len() < dec::SIZE as usize {
            return Err(DecisionError::Truncated);
        }
        let u = |at: u32| {
            let at = at as usize;
            u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
        };
        let status = u(dec::STATUS) as u16;
        let arg = u(dec::ANSWER_ARG);
        let mut effects = match std::mem::replace(&mut self.outcome, Outcome::Effects(Vec::new())) {
            Outcome::Effects(mut v) => {
                v.clear();
                v
            }
            Outcome::Final(_) => Vec::new(),
        };
        let mut location = self.location.take().unwrap_or_default();
        location.clear();
        let mut has_location = false;
        self.outcome = match u(dec::OUTCOME) {
            dec::OUTCOME_FINAL => Outcome::Final(match u(dec::ANSWER) {
                answer::RESPOND => Answer::Respond {
                    response: arg,
                    status,
                },
                answer::BLOCK => Answer::Block { status },
                answer::NOT_FOUND => Answer::NotFound { status },
                answer::GEO_BLOCKED => Answer::GeoBlocked { status },
                answer::WAF_BLOCKED => Answer::WafBlocked { status },
                answer::UNAUTHORIZED => Answer::Unauthorized { jwt: arg, status },
                answer::PREFLIGHT => Answer::Preflight { cors: arg, status },
                answer::REDIRECT => {
                    push_location(&mut location, block, u(dec::LOCATION_LEN));
                    Answer::Redirect {
                        status,
                        location: std::mem::take(&mut location),
                    }
                }
                answer::BODY_TOO_LARGE => Answer::BodyTooLarge { status },
                answer::METHOD_NOT_ALLOWED => Answer::MethodNotAllowed { allow: arg, status },
                other => return Err(DecisionError::Answer(other)),
            }),
            dec::OUTCOME_EFFECTS => {
                let count = u(dec::EFFECTS_COUNT).min(dec::MAX_EFFECTS);
                for i in 0..count {
                    let at = dec::EFFECTS + i * 8;
                    let arg = u(at + 4);
                    effects.push(match u(at) {
                        effect::VERIFY_JWT => Effect::VerifyJwt(arg),
                        effect::RATE_LIMIT => Effect::RateLimit(arg),
                        effect::CACHE => Effect::Cache(arg),
                        effect::EDIT_HEADERS => Effect::EditHeaders(arg),
                        effect::RESIDENCY => Effect::Residency(arg),
                        effect::CORS => Effect::Cors(arg),
                        effect::PROXY => Effect::Proxy(arg),
                        effect::FUNCTION => Effect::Function(arg),
                        effect::RESPOND => Effect::Respond(arg),
                        effect::REDIRECT => {
                            has_location = true;
                            Effect::Redirect(arg)
                        }
                        effect::BLOCK => Effect::Block(arg),
                        other => return Err(DecisionError::Effect(other)),
                    });
                }
                Outcome::Effects(effects)
            }
            other => return Err(DecisionError::Outcome(other)),
        };
        self.location = if has_location {
            push_location(&mut location, block, u(dec::LOCATION_LEN));
            Some(location)
        } else {
            None
        };
        self.rules.clear();
        let rules_count = u(dec::RULES_COUNT).min(dec::MAX_RULES);
        self.rules
            .extend((0..rules_count).map(|i| u(dec::RULES + i * 4)));
        let country = u(dec::COUNTRY);
        self.country = (country != 0).then_some(CountryCode([country as u8, (country >> 8) as u8]));
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&block[dec::CLIENT_IP as usize..dec::CLIENT_IP as usize + 16]);
        self.route = opt(u(dec::ROUTE));
        self.waf_score = u(dec::WAF_SCORE);
        self.data_zone = u(dec::DATA_ZONE);
        self.client_ip = ip_from_bytes(ip);
        self.flags = u(dec::FLAGS);
        self.edits = opt(u(dec::EDITS));
        Ok(())
    }

    /// The HTTP status of a final answer.
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Final(answer) => Some(answer.status()),
            Outcome::Effects(_) => None,
        }
    }
}
