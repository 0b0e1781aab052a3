//! A userspace UDP relay in front of every node's peer port, for the faults nftables cannot
//! make: delay with jitter (which reorders), duplication and loss of single datagrams.
//!
//! Only when the `flaky-links` fault is enabled: node j then listens for peers on its own
//! address as usual but advertises `relay_ip(j):7071` (an extra address on the bridge), so
//! every other node reaches it through the relay. The relay forwards each datagram to
//! `node_ip(j):7071` from one upstream socket per sender, and the answers back. Healthy, it
//! passes datagrams straight through. Partitions still hold: a node's nftables rules block
//! the relay addresses of the nodes it is cut off from too (`net::blocked_addrs`).

use crate::net::{node_ip, PEER_PORT};
use anyhow::{Context, Result};
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Largest datagram relayed (QUIC keeps to ~1,500 bytes; this leaves room).
const DATAGRAM_BYTES_MAX: usize = 65_536;
/// Senders (QUIC sockets) one relay serves: nodes × restarts; beyond it new ones are dropped.
const SENDERS_PER_RELAY_MAX: usize = 256;
/// Pause after a failed receive (e.g. the node behind the relay is down), so as not to spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Datagrams held back (delayed) at once over all relays; beyond it they pass undelayed.
const DELAYED_DATAGRAMS_MAX: usize = 100_000;

/// The relay address of node i, on the bridge (10.77.0.(100+i)).
pub fn relay_ip(i: usize) -> String {
    format!("10.77.0.{}", 100 + i)
}

/// What the relays do to each datagram, in both directions; the default passes everything.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Every datagram waits uniformly in [lo, hi] ms, so later ones overtake earlier ones.
    pub delay_ms: Option<(u64, u64)>,
    /// Percent of datagrams sent twice (the copy after its own delay).
    pub duplicate_pct: u32,
    /// Percent of datagrams dropped.
    pub drop_pct: u32,
}

#[derive(Clone, Default)]
pub struct Relays {
    faults: Arc<RwLock<LinkFaults>>,
    delayed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relays {
    pub fn set(&self, f: LinkFaults) {
        *self.faults.write().unwrap() = f;
    }

    /// Starts the relay of node `i` (its address must already be on the bridge).
    pub async fn start(&self, i: usize) -> Result<()> {
        let listen = Arc::new(
            UdpSocket::bind((relay_ip(i).as_str(), PEER_PORT))
                .await
                .with_context(|| format!("bind relay {}:{PEER_PORT}", relay_ip(i)))?,
        );
        let target: SocketAddr = format!("{}:{PEER_PORT}", node_ip(i)).parse()?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
            loop {
                let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                };
                let up = match upstreams.get(&from) {
                    Some(u) => u.clone(),
                    None if upstreams.len() < SENDERS_PER_RELAY_MAX => {
                        let Ok(u) = UdpSocket::bind((relay_ip(i).as_str(), 0)).await else {
                            continue;
                        };
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        upstreams.insert(from, u.clone());
                        // Answers of node i back to this sender.
                        tokio::spawn(me.clone().pump_back(u.clone(), listen.clone(), from));
                        u
                    }
                    None => continue,
                };
                me.forward(buf[..n].to_vec(), Out::Connected(up));
            }
        });
        Ok(())
    }

    /// Runs as long as the harness: a node that is down makes `recv` fail (ICMP port
    /// unreachable) until it is back, and then its answers must flow again.
    async fn pump_back(self, up: Arc<UdpSocket>, listen: Arc<UdpSocket>, to: SocketAddr) {
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        loop {
            match up.recv(&mut buf).await {
                Ok(n) => self.forward(buf[..n].to_vec(), Out::To(listen.clone(), to)),
                Err(_) => tokio::time::sleep(RECV_ERROR_PAUSE).await,
            }
        }
    }

    /// Sends one datagram on, after whatever the current faults say.
    fn forward(&self, data: Vec<u8>, out: Out) {
        let f = *self.faults.read().unwrap();
        let mut rng = rand::thread_rng();
        if f.drop_pct > 0 && rng.gen_range(0..100) < f.drop_pct {
            return;
        }
        let copies = if f.duplicate_pct > 0 && rng.gen_range(0..100) < f.duplicate_pct {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = f
                .delay_ms
                .map(|(lo, hi)| rng.gen_range(lo..=hi))
                .unwrap_or(0);
            let used = self.delayed.load(std::sync::atomic::Ordering::Relaxed);
            if delay == 0 || used >= DELAYED_DATAGRAMS_MAX {
                out.send_now(&data);
                continue;
            }
            self.delayed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (data, out, delayed) = (data.clone(), out.clone(), self.delayed.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                out.send_now(&data);
                delayed.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    }
}

#[derive(Clone)]
enum Out {
    /// To the node, on the sender's upstream socket.
    Connected(Arc<UdpSocket>),
    /// Back to a sender, from the relay's listening socket.
    To(Arc<UdpSocket>, SocketAddr),
}

impl Out {
    fn send_now(&self, data: &[u8]) {
        let r = match self {
            Out::Connected(s) => s.try_send(data),
            Out::To(s, to) => s.try_send_to(data, *to),
        };
        // Not writable yet (a fresh socket the reactor has not polled, or a full buffer):
        // send when it is, rather than lose the datagram.
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            let (out, data) = (self.clone(), data.to_vec());
            tokio::spawn(async move {
                let _ = match &out {
                    Out::Connected(s) => s.send(&data).await,
                    Out::To(s, to) => s.send_to(&data, *to).await,
                };
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets on 127.0.0.1 talking through a relay-like forward: duplication doubles,
    /// drop removes, delay keeps everything.
    #[tokio::test]
    async fn faults_shape_what_goes_through() {
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let src = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        src.connect(sink.local_addr().unwrap()).await.unwrap();
        let count = |relays: Relays, n: usize| {
            let src = src.clone();
            async move {
                for _ in 0..n {
                    relays.forward(vec![1, 2, 3], Out::Connected(src.clone()));
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        };
        let drain = |sink: &UdpSocket| {
            let mut buf = [0u8; 16];
            let mut got = 0;
            while sink.try_recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        };
        let r = Relays::default();
        let cases = [
            (
                LinkFaults::default(),
                50,
                "healthy relays pass everything once",
            ),
            (
                LinkFaults {
                    duplicate_pct: 100,
                    ..Default::default()
                },
                100,
                "100 % duplication doubles",
            ),
            (
                LinkFaults {
                    drop_pct: 100,
                    ..Default::default()
                },
                0,
                "100 % loss drops all",
            ),
        ];
        for (faults, expected, what) in cases {
            r.set(faults);
            count(r.clone(), 50).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(drain(&sink), expected, "{what}");
        }
        r.set(LinkFaults {
            delay_ms: Some((20, 40)),
            ..Default::default()
        });
        count(r.clone(), 50).await;
        let early = drain(&sink);
        assert!(early < 50, "delayed datagrams are not all there at once");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(early + drain(&sink), 50, "and all of them arrive, once");
    }
}
