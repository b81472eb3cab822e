//! `listen` and `[http]`: where the gateway listens, its limits and the
//! proxies whose `X-Forwarded-For` it believes.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{invalid, positive, ConfigError, StringList};

/// HTTP limits.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest accepted webhook body; larger → 413.
    pub max_body_bytes: usize,
    /// Whole-request timeout (handler included); slower → 408.
    pub request_timeout: Duration,
    /// Largest accepted size of a request head (request line and headers);
    /// larger → 431 and the connection is closed.
    pub max_header_bytes: usize,
    /// Most headers one request may carry; more → 431.
    pub max_headers: usize,
    /// Time a client has to send a whole request head, counted from its
    /// first byte (or, on a kept-alive connection, from the previous
    /// response); slower → the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two parts of a request body; longer →
    /// 408.
    pub body_idle_timeout: Duration,
    /// Failed webhook signatures one client address may make per minute
    /// before its deliveries get 429 (0 = no limit).
    pub signature_failures_per_minute: u32,
    /// Client addresses the signature-failure limiter remembers at most.
    pub signature_failure_addresses: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHttp {
    max_body_bytes: usize,
    request_timeout_ms: u64,
    max_header_bytes: usize,
    max_headers: usize,
    header_read_timeout_ms: u64,
    body_idle_timeout_ms: u64,
    signature_failures_per_minute: u32,
    signature_failure_addresses: usize,
    #[serde(default)]
    trusted_proxies: StringList,
}

/// `listen`: a `host:port` address.
pub(super) fn listen(raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.trim()
        .parse()
        .map_err(|e| invalid("listen", format!("{raw:?} is not a host:port address: {e}")))
}

impl RawHttp {
    pub(super) fn validate(self) -> Result<HttpSettings, ConfigError> {
        let trusted_proxies = self
            .trusted_proxies
            .into_vec()
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "http.trusted_proxies",
                            format!("{p:?} is neither an IP address nor a CIDR"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be greater than 0"));
        }
        // hyper needs room for a request line and a few headers.
        if self.max_header_bytes < 1024 {
            return Err(invalid("http.max_header_bytes", "must be at least 1024"));
        }
        Ok(HttpSettings {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(positive(
                "http.request_timeout_ms",
                self.request_timeout_ms,
            )?),
            max_header_bytes: self.max_header_bytes,
            max_headers: positive("http.max_headers", self.max_headers as u64)? as usize,
            header_read_timeout: Duration::from_millis(positive(
                "http.header_read_timeout_ms",
                self.header_read_timeout_ms,
            )?),
            body_idle_timeout: Duration::from_millis(positive(
                "http.body_idle_timeout_ms",
                self.body_idle_timeout_ms,
            )?),
            signature_failures_per_minute: self.signature_failures_per_minute,
            signature_failure_addresses: positive(
                "http.signature_failure_addresses",
                self.signature_failure_addresses as u64,
            )? as usize,
            trusted_proxies,
        })
    }
}
