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
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Largest accepted total size of request headers; larger → 431.
    pub max_header_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHttp {
    max_body_bytes: usize,
    request_timeout_ms: u64,
    max_header_bytes: usize,
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
        Ok(HttpSettings {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(positive(
                "http.request_timeout_ms",
                self.request_timeout_ms,
            )?),
            max_header_bytes: self.max_header_bytes,
            trusted_proxies,
        })
    }
}
