//! The HTTP side: one client per connection, the signed POST, and the guard
//! that keeps load on this machine unless told otherwise.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use reqwest::Url;

use crate::body::SignedBody;

/// What became of one request.
pub enum Outcome {
    /// 2xx.
    Ok,
    /// Anything else: the status code or the transport error kind.
    Failed(String),
}

/// Parses the target URL and refuses anything but a loopback host unless
/// `allow_remote` is set.
pub fn target(url: &str, allow_remote: bool) -> anyhow::Result<Url> {
    let url = Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback && !allow_remote {
        bail!("{url} is not a loopback address; pass --allow-remote to load another host");
    }
    Ok(url)
}

/// An HTTP/1.1 client keeping at most `keep_alive` idle connections, ignoring
/// proxy settings from the environment and giving up after `timeout`. The
/// load generator gives each connection its own client with `keep_alive` 1.
pub fn client(timeout: Duration, keep_alive: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(keep_alive)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// POSTs a signed body as Meta would and drains the response.
pub async fn post(client: &reqwest::Client, url: &Url, body: SignedBody) -> Outcome {
    let signature = match HeaderValue::from_str(&body.signature) {
        Ok(v) => v,
        Err(_) => return Outcome::Failed("bad-signature-header".into()),
    };
    let res = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "facebookexternalua")
        .header("x-hub-signature-256", signature)
        .body(body.body)
        .send()
        .await;
    match res {
        Ok(resp) => {
            let status = resp.status();
            // Read the body so the connection goes back to the pool.
            let drained = resp.bytes().await;
            if !status.is_success() {
                Outcome::Failed(status.as_u16().to_string())
            } else if drained.is_err() {
                Outcome::Failed("body".into())
            } else {
                Outcome::Ok
            }
        }
        Err(e) if e.is_timeout() => Outcome::Failed("timeout".into()),
        Err(e) if e.is_connect() => Outcome::Failed("connect".into()),
        Err(_) => Outcome::Failed("io".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_allow_remote() {
        assert!(target("http://127.0.0.1:8080/webhooks/whatsapp", false).is_ok());
        assert!(target("http://localhost:8080/x", false).is_ok());
        assert!(target("http://[::1]:8080/x", false).is_ok());
        assert!(target("http://10.0.0.1/x", false).is_err());
        assert!(target("http://example.com/x", false).is_err());
        assert!(target("http://example.com/x", true).is_ok());
    }
}
