//! A Redis Cluster of the test's own: `masters` redis-server processes on
//! loopback ports with `--cluster-enabled yes`, joined by
//! `redis-cli --cluster create` (equal slot ranges, no replicas), each
//! persisting to AOF with `appendfsync always` so a node SIGKILLed and
//! restarted on its port and directory comes back with every write it
//! acknowledged and its slots (`nodes.conf`).
//!
//! `INLET_TEST_REDIS_CLUSTER` (comma-separated seed URLs, what `.ci/run`
//! exports for the cluster it starts) makes [`RedisCluster::shared`] use
//! that cluster instead of starting one; tests that kill nodes always start
//! their own.

use std::time::Duration;

use super::{closed_port, eventually, redis_server};

/// One node of a [`RedisCluster`].
struct Node {
    port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = redis_server(self.port, self.dir.path())
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            // Short, so a killed node is noticed soon (the test waits for
            // the state to come back, never for a fixed time).
            .args(["--cluster-node-timeout", "2000"])
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
    }
}

/// A cluster of `redis-server` processes, or the one `.ci/run` started.
pub struct RedisCluster {
    nodes: Vec<Node>,
    external: Option<String>,
}

/// A command's reply from the node at `url`, if it answers.
async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(url).ok()?;
    let mut c = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut c))
        .await
        .ok()?
        .ok()
}

/// Whether the node at `url` reports `cluster_state:ok` and every slot
/// assigned.
async fn cluster_ok(url: &str) -> bool {
    let info: Option<String> = query(url, redis::cmd("CLUSTER").arg("INFO")).await;
    info.is_some_and(|i| {
        i.contains("cluster_state:ok") && i.contains("cluster_slots_assigned:16384")
    })
}

impl RedisCluster {
    /// Starts `masters` nodes and creates the cluster; returns once every
    /// node reports it ok.
    pub async fn start(masters: usize) -> RedisCluster {
        let mut nodes: Vec<Node> = (0..masters)
            .map(|_| Node {
                port: closed_port(),
                bus_port: closed_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
            })
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        for n in &nodes {
            let url = n.url();
            eventually(Duration::from_secs(20), "cluster node answers", || async {
                query::<String>(&url, &redis::cmd("PING")).await
            })
            .await;
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            external: None,
        };
        cluster.wait_ok().await;
        cluster
    }

    /// The cluster of `INLET_TEST_REDIS_CLUSTER` when set (checked to be
    /// ok), else a new one of three masters.
    pub async fn shared() -> RedisCluster {
        match std::env::var("INLET_TEST_REDIS_CLUSTER") {
            Ok(seeds) if !seeds.trim().is_empty() => {
                let cluster = RedisCluster {
                    nodes: Vec::new(),
                    external: Some(seeds),
                };
                cluster.wait_ok().await;
                cluster
            }
            _ => RedisCluster::start(3).await,
        }
    }

    fn urls(&self) -> Vec<String> {
        match &self.external {
            Some(seeds) => seeds.split(',').map(|s| s.trim().to_string()).collect(),
            None => self.nodes.iter().map(Node::url).collect(),
        }
    }

    /// The seed node URLs, comma-separated (`INLET_REDIS_URL`).
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// Waits until every node reports the cluster ok.
    pub async fn wait_ok(&self) {
        for url in self.urls() {
            eventually(Duration::from_secs(30), "cluster_state:ok", || async {
                cluster_ok(&url).await.then_some(())
            })
            .await;
        }
    }

    /// The `host:port` of the master serving `slot`.
    pub async fn master_of_slot(&self, slot: u16) -> String {
        let url = self.urls()[0].clone();
        let slots: redis::Value = query(&url, redis::cmd("CLUSTER").arg("SLOTS"))
            .await
            .expect("CLUSTER SLOTS answers");
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            if (*from..=*to).contains(&i64::from(slot)) {
                if let Some(redis::Value::Array(master)) = parts.get(2) {
                    let host = match master.first() {
                        Some(redis::Value::BulkString(h)) => {
                            String::from_utf8_lossy(h).into_owned()
                        }
                        other => panic!("CLUSTER SLOTS host: {other:?}"),
                    };
                    let port = match master.get(1) {
                        Some(redis::Value::Int(p)) => *p,
                        other => panic!("CLUSTER SLOTS port: {other:?}"),
                    };
                    return format!("{host}:{port}");
                }
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// SIGKILLs node `i` (no shutdown, nothing saved beyond its AOF).
    pub async fn kill(&mut self, i: usize) {
        assert!(self.external.is_none(), "never kill the shared cluster");
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Restarts node `i` on its port and directory (AOF and `nodes.conf`
    /// read back) and waits until the cluster is ok again.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_ok().await;
    }
}
