//! The sender's rate limiter behind one trait: in-process
//! ([`LocalLimiter`], one sender process, no Redis) or shared by every
//! sender process through Redis (atomic, so N workers together never exceed
//! the rate). Both apply the arithmetic of [`crate::outbound::rate`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::BoxFuture;

use crate::outbound::rate::{self, Bucket, Grant, LimiterState, Limits, Pacer, Slowdown};

/// The limiter could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// Redis failed.
    #[error("limiter: redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A rate limiter of sends per sender and per (sender, recipient).
pub trait SendLimiter: Send + Sync + 'static {
    /// One all-or-nothing acquisition (see [`rate::acquire`]).
    fn acquire<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        media: bool,
    ) -> BoxFuture<'a, Result<Grant, LimiterError>>;
    /// A sender-throttle answer from Meta ([`rate::on_throttle`]).
    fn throttled<'a>(
        &'a self,
        sender: &'a str,
        pause_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>>;
    /// A pair throttle (131056): the recipient's next send waits.
    fn pair_throttled<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        backoff_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>>;
    /// Tokens available now for a sender (`None`: never seen).
    fn tokens<'a>(&'a self, sender: &'a str) -> BoxFuture<'a, Result<Option<f64>, LimiterError>>;
}

#[derive(Debug, Clone, Copy)]
struct SenderState {
    bucket: Bucket,
    media: Bucket,
    slowdown: Slowdown,
}

/// The in-process limiter (one process sends).
#[derive(Debug)]
pub struct LocalLimiter {
    limits: Limits,
    epoch: Instant,
    senders: Mutex<HashMap<String, SenderState>>,
    pairs: Mutex<HashMap<(String, String), Pacer>>,
}

impl LocalLimiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            epoch: Instant::now(),
            senders: Mutex::new(HashMap::new()),
            pairs: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64 + 1
    }

    fn sender_state(
        &self,
        map: &mut HashMap<String, SenderState>,
        sender: &str,
        now: i64,
    ) -> SenderState {
        *map.entry(sender.to_string()).or_insert_with(|| {
            let fresh = LimiterState::fresh(&self.limits, now);
            SenderState {
                bucket: fresh.bucket,
                media: fresh.media,
                slowdown: fresh.slowdown,
            }
        })
    }

    /// [`SendLimiter::acquire`] at an explicit time (tests).
    pub fn acquire_at(&self, sender: &str, recipient: &str, media: bool, now: i64) -> Grant {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.sender_state(&mut senders, sender, now);
        let key = (sender.to_string(), recipient.to_string());
        let pacer = pairs.get(&key).copied().unwrap_or(Pacer { tat_ms: 0 });
        let state = LimiterState {
            bucket: s.bucket,
            media: s.media,
            pacer,
            slowdown: s.slowdown,
        };
        let (next, grant) = rate::acquire(&state, &self.limits, media, now);
        if grant == Grant::Now {
            senders.insert(
                sender.to_string(),
                SenderState {
                    bucket: next.bucket,
                    media: next.media,
                    slowdown: next.slowdown,
                },
            );
            pairs.insert(key, next.pacer);
            // Idle pacers are forgotten (their time is past).
            if pairs.len() > 100_000 {
                pairs.retain(|_, p| p.tat_ms > now);
            }
        }
        grant
    }

    /// [`SendLimiter::tokens`] at an explicit time (tests).
    pub fn tokens_at(&self, sender: &str, now: i64) -> Option<f64> {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.get(sender).map(|s| {
            let factor = s.slowdown.factor_at(now, self.limits.recovery_ms);
            s.bucket
                .available(now, self.limits.rate * factor, self.limits.burst)
        })
    }

    /// [`SendLimiter::pair_throttled`] at an explicit time (tests).
    pub fn pair_throttled_at(&self, sender: &str, recipient: &str, backoff_ms: i64, now: i64) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (sender.to_string(), recipient.to_string());
        let pacer = pairs.get(&key).copied().unwrap_or(Pacer { tat_ms: 0 });
        pairs.insert(key, pacer.push_back(now, backoff_ms));
    }

    /// [`SendLimiter::throttled`] at an explicit time (tests).
    pub fn throttled_at(&self, sender: &str, pause_ms: i64, now: i64) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.sender_state(&mut senders, sender, now);
        let state = LimiterState {
            bucket: s.bucket,
            media: s.media,
            pacer: Pacer { tat_ms: 0 },
            slowdown: s.slowdown,
        };
        let next = rate::on_throttle(&state, &self.limits, pause_ms, now);
        senders.insert(
            sender.to_string(),
            SenderState {
                bucket: next.bucket,
                media: next.media,
                slowdown: next.slowdown,
            },
        );
    }
}

impl SendLimiter for LocalLimiter {
    fn acquire<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        media: bool,
    ) -> BoxFuture<'a, Result<Grant, LimiterError>> {
        let now = self.now();
        Box::pin(async move { Ok(self.acquire_at(sender, recipient, media, now)) })
    }

    fn throttled<'a>(
        &'a self,
        sender: &'a str,
        pause_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>> {
        let now = self.now();
        Box::pin(async move {
            self.throttled_at(sender, pause_ms, now);
            Ok(())
        })
    }

    fn pair_throttled<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        backoff_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>> {
        let now = self.now();
        Box::pin(async move {
            self.pair_throttled_at(sender, recipient, backoff_ms, now);
            Ok(())
        })
    }

    fn tokens<'a>(&'a self, sender: &'a str) -> BoxFuture<'a, Result<Option<f64>, LimiterError>> {
        let now = self.now();
        Box::pin(async move { Ok(self.tokens_at(sender, now)) })
    }
}

/// The limiter shared through Redis: one Lua script per call, so every
/// acquisition is atomic across all sender processes, on Redis's clock
/// (`TIME`). The script is the arithmetic of [`crate::outbound::rate`] line
/// for line (bucket refill, GCRA pacer, throttle slowdown); a test compares
/// the two on the same sequence of calls (`tests/outbound.rs`). Both keys of one sender carry the
/// sender in a `{…}` hash tag (one Redis Cluster slot); the recipient is
/// hashed, so no phone number or BSUID appears in a key. Keys expire when
/// idle.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: crate::queue::RedisConn,
    prefix: String,
    limits: Limits,
    script: std::sync::Arc<redis::Script>,
}

const LUA: &str = r#"
local op = ARGV[1]
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local mrate, mburst = tonumber(ARGV[5]), tonumber(ARGV[6])
local interval, pburst = tonumber(ARGV[7]), tonumber(ARGV[8])
local recovery, minf = tonumber(ARGV[9]), tonumber(ARGV[10])
local arg, ttl = tonumber(ARGV[11]), tonumber(ARGV[12])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'mtokens', 'mat', 'factor', 'since', 'paused')
local tokens = tonumber(h[1]) or burst
local at = tonumber(h[2]) or now
local mtokens = tonumber(h[3]) or mburst
local mat = tonumber(h[4]) or now
local factor = tonumber(h[5]) or 1
local since = tonumber(h[6]) or 0
local paused = tonumber(h[7]) or 0
local function factor_at(t)
  if factor >= 1 or recovery <= 0 then return 1 end
  local el = math.max(t - since, 0)
  return math.min(factor + (1 - factor) * el / recovery, 1)
end
local function available(tok, tat, r, b)
  return math.min(tok + math.max(now - tat, 0) * r / 1000, b)
end
local function wait(tok, tat, r, b)
  local have = available(tok, tat, r, b)
  if have >= 1 then return 0 end
  if r <= 0 then return 9007199254740991 end
  return math.ceil((1 - have) * 1000 / r)
end
local function save()
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at), 'mtokens', tostring(mtokens),
    'mat', tostring(mat), 'factor', tostring(factor), 'since', tostring(since), 'paused', tostring(paused))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if op == 'tokens' then
  if h[2] == false then return false end
  return tostring(available(tokens, at, rate * factor_at(now), burst))
end
if op == 'throttle' then
  local f = math.max(factor_at(now) / 2, minf)
  factor = f
  since = now
  paused = math.max(paused, now + arg)
  tokens = 0
  at = paused
  save()
  return 1
end
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if op == 'pair' then
  tat = math.max(tat, now + arg)
  redis.call('SET', KEYS[2], tostring(tat), 'PX', math.max(tat - now, 0) + ttl)
  return 1
end
-- acquire
local f = factor_at(now)
local r, mr = rate * f, mrate * f
local sw = math.max(paused - now, 0)
sw = math.max(sw, wait(tokens, at, r, burst))
if arg == 1 then sw = math.max(sw, wait(mtokens, mat, mr, mburst)) end
if sw > 0 then return {1, sw} end
local tau = interval * (math.max(pburst, 1) - 1)
local pw = math.max(math.max(tat, now) - tau - now, 0)
if pw > 0 then return {2, pw} end
tokens = available(tokens, at, r, burst) - 1
at = math.max(now, at)
if arg == 1 then
  mtokens = available(mtokens, mat, mr, mburst) - 1
  mat = math.max(now, mat)
end
tat = math.max(tat, now) + interval
save()
redis.call('SET', KEYS[2], tostring(tat), 'PX', math.max(tat - now, 0) + ttl)
return {0, 0}
"#;

/// Idle limiter keys expire after this long (beyond any pacer time).
const KEY_TTL_MS: i64 = 3_600_000;

impl RedisLimiter {
    /// A limiter on `conn` under `prefix`.
    pub fn new(conn: crate::queue::RedisConn, prefix: &str, limits: Limits) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            limits,
            script: std::sync::Arc::new(redis::Script::new(LUA)),
        }
    }

    fn keys(&self, sender: &str, recipient: &str) -> (String, String) {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(recipient.as_bytes());
        let hash = hex::encode(&digest[..8]);
        (
            format!("{}outbound:{{{sender}}}:rate", self.prefix),
            format!("{}outbound:{{{sender}}}:pair:{hash}", self.prefix),
        )
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &str,
        sender: &str,
        recipient: &str,
        arg: i64,
        now_ms: i64,
    ) -> Result<T, LimiterError> {
        let (k1, k2) = self.keys(sender, recipient);
        let l = &self.limits;
        let mut inv = self.script.key(k1);
        inv.key(k2)
            .arg(op)
            .arg(now_ms)
            .arg(l.rate)
            .arg(l.burst)
            .arg(l.media_rate)
            .arg(l.media_burst)
            .arg(l.pair_interval_ms)
            .arg(l.pair_burst)
            .arg(l.recovery_ms)
            .arg(l.min_factor)
            .arg(arg)
            .arg(KEY_TTL_MS);
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// [`SendLimiter::acquire`] at an explicit time (`now_ms` > 0; tests) or
    /// on Redis's clock (0).
    pub async fn acquire_at(
        &self,
        sender: &str,
        recipient: &str,
        media: bool,
        now_ms: i64,
    ) -> Result<Grant, LimiterError> {
        let (code, wait): (i64, i64) = self
            .call("acquire", sender, recipient, i64::from(media), now_ms)
            .await?;
        Ok(match code {
            0 => Grant::Now,
            1 => Grant::SenderWait(wait.max(1)),
            _ => Grant::PairWait(wait.max(1)),
        })
    }

    /// [`SendLimiter::throttled`] at an explicit time (tests) or now (0).
    pub async fn throttled_at(
        &self,
        sender: &str,
        pause_ms: i64,
        now_ms: i64,
    ) -> Result<(), LimiterError> {
        let _: i64 = self.call("throttle", sender, "", pause_ms, now_ms).await?;
        Ok(())
    }
}

impl RedisLimiter {
    /// [`SendLimiter::pair_throttled`] at an explicit time (tests) or now (0).
    pub async fn pair_throttled_at(
        &self,
        sender: &str,
        recipient: &str,
        backoff_ms: i64,
        now_ms: i64,
    ) -> Result<(), LimiterError> {
        let _: i64 = self
            .call("pair", sender, recipient, backoff_ms, now_ms)
            .await?;
        Ok(())
    }

    /// [`SendLimiter::tokens`] at an explicit time (tests) or now (0).
    pub async fn tokens_at(&self, sender: &str, now_ms: i64) -> Result<Option<f64>, LimiterError> {
        let v: Option<String> = self.call("tokens", sender, "", 0, now_ms).await?;
        Ok(v.and_then(|s| s.parse().ok()))
    }
}

impl SendLimiter for RedisLimiter {
    fn acquire<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        media: bool,
    ) -> BoxFuture<'a, Result<Grant, LimiterError>> {
        Box::pin(self.acquire_at(sender, recipient, media, 0))
    }

    fn throttled<'a>(
        &'a self,
        sender: &'a str,
        pause_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>> {
        Box::pin(self.throttled_at(sender, pause_ms, 0))
    }

    fn pair_throttled<'a>(
        &'a self,
        sender: &'a str,
        recipient: &'a str,
        backoff_ms: i64,
    ) -> BoxFuture<'a, Result<(), LimiterError>> {
        Box::pin(self.pair_throttled_at(sender, recipient, backoff_ms, 0))
    }

    fn tokens<'a>(&'a self, sender: &'a str) -> BoxFuture<'a, Result<Option<f64>, LimiterError>> {
        Box::pin(self.tokens_at(sender, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: f64) -> Limits {
        Limits {
            rate,
            burst,
            media_rate: rate / 4.0,
            media_burst: 1.0,
            pair_interval_ms: 6000,
            pair_burst: 1,
            throttle_pause_ms: 1000,
            recovery_ms: 10_000,
            min_factor: 0.1,
        }
    }

    #[test]
    fn local_limiter_keeps_the_rate_in_every_second() {
        let l = LocalLimiter::new(limits(50.0, 50.0));
        let mut granted = Vec::new();
        // Many recipients, one try per ms for 5 s.
        for now in 1..5000 {
            let r = format!("r{now}");
            if l.acquire_at("s", &r, false, now) == Grant::Now {
                granted.push(now);
            }
        }
        for start in 0..4000 {
            let n = granted
                .iter()
                .filter(|t| **t >= start && **t < start + 1000)
                .count();
            assert!(n <= 100, "{n} sends in the second from {start}");
        }
        assert!(granted.len() >= 50 + 4 * 50 - 2, "{}", granted.len());
    }

    #[test]
    fn the_pair_pacer_holds_one_recipient_only() {
        let l = LocalLimiter::new(limits(50.0, 50.0));
        assert_eq!(l.acquire_at("s", "a", false, 1), Grant::Now);
        assert!(matches!(
            l.acquire_at("s", "a", false, 2),
            Grant::PairWait(_)
        ));
        assert_eq!(l.acquire_at("s", "b", false, 2), Grant::Now);
        assert_eq!(l.acquire_at("s", "a", false, 6001), Grant::Now);
    }

    #[test]
    fn a_throttle_pauses_the_sender() {
        let l = LocalLimiter::new(limits(50.0, 50.0));
        assert_eq!(l.acquire_at("s", "a", false, 1), Grant::Now);
        l.throttled_at("s", 1000, 2);
        assert!(matches!(
            l.acquire_at("s", "b", false, 3),
            Grant::SenderWait(_)
        ));
        assert!(matches!(l.acquire_at("t", "b", false, 3), Grant::Now));
    }
}
