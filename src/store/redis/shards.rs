//! Sharded pub/sub on a Redis Cluster: each room's channel is listened to on the master that
//! owns its slot (`SSUBSCRIBE`), so that a message stays on its room's shard instead of being
//! broadcast to every node of the cluster as a plain `PUBLISH` is.
//!
//! The client library is not trusted with this (redis-rs takes the `sunsubscribe` that a
//! master pushes when it loses a slot for a removal, and never subscribes again): the bus owns
//! one connection per master ([`ShardLink`]), speaking the few RESP2 frames that sharded
//! pub/sub needs, and moves a channel itself when its slot moves:
//!
//! - a master that loses a slot (a failover, a migration) pushes `sunsubscribe` for each
//!   channel of it: the channel is *homeless*;
//! - a connection that ends, or stops answering pings, leaves every channel on it homeless;
//! - an `SSUBSCRIBE` answered with an error (`MOVED`: the slot map was stale) too.
//!
//! Homeless channels are found a home on the next tick: the slot map is read again (`CLUSTER
//! SLOTS`), each channel subscribed on its slot's master, and once Redis confirms, their rooms
//! are repaired ([`super::RedisEvent::Moved`]): whatever was published while a room was
//! homeless is read back from what Redis keeps, as after any gap. (Modelled on the Centrifugo
//! broker's sharded pub/sub: a connection per shard, resubscription on `sunsubscribe`.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// How long a connection, a subscription or a ping may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The slots of a cluster.
const SLOTS: u16 = 16_384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and the
/// next `}`, if not empty) or of the whole key, modulo 16,384, as Redis Cluster computes it.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(bytes)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

/// What a shard's connection heard, for the bus.
#[derive(Debug)]
pub enum Heard {
    /// A message on a channel.
    Message { channel: String, payload: Vec<u8> },
    /// The channel is no longer listened to there: its slot moved, or the subscription was
    /// refused.
    Homeless { channel: String },
    /// The connection `link` to the master at this address ended: every channel on it is
    /// homeless (unless a newer connection to that master has taken over).
    Lost { master: SocketAddr, link: u64 },
}

/// What a connection waits for, in the order its requests were sent: Redis answers them in
/// that order, between the messages and pushes it sends on its own.
enum Expect {
    Subscribed {
        channel: String,
        confirm: Option<oneshot::Sender<bool>>,
    },
    Unsubscribed {
        channel: String,
    },
    Pong,
}

/// One connection to one master, for sharded pub/sub. Its reader runs as a task of its own;
/// requests are written here.
struct ShardLink {
    /// Which connection this is: a connection given up may still report its end after a
    /// new one to the same master was made.
    id: u64,
    writer: OwnedWriteHalf,
    expected: Arc<Mutex<VecDeque<Expect>>>,
    /// Pings sent and not yet answered: more than one at a tick means it stopped answering.
    unanswered: Arc<Mutex<u32>>,
}

impl ShardLink {
    async fn connect(
        master: SocketAddr,
        id: u64,
        heard: mpsc::Sender<Heard>,
    ) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(master))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let expected = Arc::new(Mutex::new(VecDeque::new()));
        let unanswered = Arc::new(Mutex::new(0));
        tokio::spawn(read(
            master,
            id,
            BufReader::new(reader),
            Arc::clone(&expected),
            Arc::clone(&unanswered),
            heard,
        ));
        Ok(ShardLink {
            id,
            writer,
            expected,
            unanswered,
        })
    }

    fn expect(&self, what: Expect) {
        if let Ok(mut expected) = self.expected.lock() {
            expected.push_back(what);
        }
    }

    async fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let packed = command.get_packed_command();
        tokio::time::timeout(ANSWER_TIMEOUT, self.writer.write_all(&packed))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        confirm: Option<oneshot::Sender<bool>>,
    ) -> std::io::Result<()> {
        self.expect(Expect::Subscribed {
            channel: channel.to_string(),
            confirm,
        });
        self.send(&["SSUBSCRIBE", channel]).await
    }

    async fn unsubscribe(&mut self, channel: &str) -> std::io::Result<()> {
        self.expect(Expect::Unsubscribed {
            channel: channel.to_string(),
        });
        self.send(&["SUNSUBSCRIBE", channel]).await
    }

    /// Pings; `false` if the last ping is still unanswered (the master stopped answering).
    async fn ping(&mut self) -> bool {
        let stale = self.unanswered.lock().map_or(true, |mut unanswered| {
            *unanswered += 1;
            *unanswered > 1
        });
        if stale {
            return false;
        }
        self.expect(Expect::Pong);
        self.send(&["PING"]).await.is_ok()
    }
}

/// Reads one connection's frames until it ends.
async fn read(
    master: SocketAddr,
    link: u64,
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    expected: Arc<Mutex<VecDeque<Expect>>>,
    unanswered: Arc<Mutex<u32>>,
    heard: mpsc::Sender<Heard>,
) {
    while let Ok(frame) = read_frame(&mut reader).await {
        let next = |expected: &Arc<Mutex<VecDeque<Expect>>>| {
            expected.lock().ok().and_then(|mut e| e.pop_front())
        };
        let mut said = match frame {
            Frame::Array(parts) => parts,
            Frame::Error(err) => {
                // The answer to a request: a subscription refused (`MOVED`, `CROSSSLOT`).
                debug!(%master, cause = ?err, "a shard refused a request");
                if let Some(Expect::Subscribed { channel, confirm }) = next(&expected) {
                    if let Some(confirm) = confirm {
                        let _ = confirm.send(false);
                    }
                    let _ = heard.send(Heard::Homeless { channel }).await;
                }
                continue;
            }
            _ => continue,
        };
        let text = |said: &[Frame], i: usize| match said.get(i) {
            Some(Frame::Bulk(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        };
        match text(&said, 0).as_str() {
            "smessage" => {
                let channel = text(&said, 1);
                let payload = match said.get_mut(2) {
                    Some(Frame::Bulk(payload)) => std::mem::take(payload),
                    _ => continue,
                };
                let message = Heard::Message { channel, payload };
                if heard.send(message).await.is_err() {
                    return;
                }
            }
            "ssubscribe" => {
                if let Some(Expect::Subscribed {
                    confirm: Some(confirm),
                    ..
                }) = next(&expected)
                {
                    let _ = confirm.send(true);
                }
            }
            "sunsubscribe" => {
                let channel = text(&said, 1);
                let asked = expected.lock().ok().is_some_and(|mut e| {
                    let asked = matches!(e.front(), Some(Expect::Unsubscribed { channel: c }) if *c == channel);
                    if asked {
                        e.pop_front();
                    }
                    asked
                });
                // Not asked for: the master lost the channel's slot.
                if !asked && heard.send(Heard::Homeless { channel }).await.is_err() {
                    return;
                }
            }
            "pong" => {
                next(&expected);
                if let Ok(mut unanswered) = unanswered.lock() {
                    *unanswered = 0;
                }
            }
            _ => {}
        }
    }
    // Whoever waited for a confirmation is told no.
    if let Ok(mut expected) = expected.lock() {
        for waiting in expected.drain(..) {
            if let Expect::Subscribed {
                confirm: Some(confirm),
                ..
            } = waiting
            {
                let _ = confirm.send(false);
            }
        }
    }
    let _ = heard.send(Heard::Lost { master, link }).await;
}

/// A RESP2 frame, as a subscribed connection receives them: arrays of bulk strings and
/// integers, and errors.
enum Frame {
    Array(Vec<Frame>),
    Bulk(Vec<u8>),
    Int,
    Simple,
    Error(String),
    Nil,
}

/// Reads one [`Frame`].
async fn read_frame(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Frame> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    let (kind, rest) = line.split_at_checked(1).ok_or_else(invalid)?;
    Ok(match kind {
        "*" => {
            let count: i64 = rest.parse().map_err(|_| invalid())?;
            let mut parts = Vec::new();
            for _ in 0..count.max(0) {
                parts.push(Box::pin(read_frame(reader)).await?);
            }
            Frame::Array(parts)
        }
        "$" => {
            let length: i64 = rest.parse().map_err(|_| invalid())?;
            let Ok(length) = usize::try_from(length) else {
                return Ok(Frame::Nil);
            };
            let mut bytes = vec![0; length + 2];
            reader.read_exact(&mut bytes).await?;
            bytes.truncate(length);
            Frame::Bulk(bytes)
        }
        ":" => Frame::Int,
        "+" => Frame::Simple,
        "-" => Frame::Error(rest.to_string()),
        _ => return Err(invalid()),
    })
}

/// The bus's sharded subscriptions: where each channel is listened to, the connections to the
/// masters, and the channels waiting for a home.
pub struct Shards {
    /// Where the slot map is read from, in turn.
    seeds: Vec<redis::Client>,
    /// The masters' slot ranges, as last read.
    owners: Vec<(u16, u16, SocketAddr)>,
    links: HashMap<SocketAddr, ShardLink>,
    /// Each channel listened to, and its master.
    home: HashMap<String, SocketAddr>,
    homeless: HashSet<String>,
    heard: mpsc::Sender<Heard>,
    /// The id of the next connection made.
    next_link: u64,
}

impl Shards {
    pub fn new(seeds: Vec<redis::Client>, heard: mpsc::Sender<Heard>) -> Self {
        Shards {
            seeds,
            owners: Vec::new(),
            links: HashMap::new(),
            home: HashMap::new(),
            homeless: HashSet::new(),
            heard,
            next_link: 0,
        }
    }

    /// How many masters are listened to, and how many channels wait for a home.
    pub fn state(&self) -> (usize, usize) {
        (self.links.len(), self.homeless.len())
    }

    /// Listens to `channel` on its slot's master; answers `confirm` once Redis has (or
    /// `false`). A channel that cannot be placed now waits for a home, unconfirmed.
    pub async fn subscribe(&mut self, channel: String, confirm: Option<oneshot::Sender<bool>>) {
        let Some((master, link)) = self.place(&channel).await else {
            if let Some(confirm) = confirm {
                let _ = confirm.send(false);
            }
            self.homeless.insert(channel);
            return;
        };
        if link.subscribe(&channel, confirm).await.is_err() {
            self.lost(master);
            return;
        }
        self.homeless.remove(&channel);
        self.home.insert(channel, master);
    }

    /// Stops listening to `channel`.
    pub async fn unsubscribe(&mut self, channel: &str) {
        self.homeless.remove(channel);
        let Some(master) = self.home.remove(channel) else {
            return;
        };
        if let Some(link) = self.links.get_mut(&master)
            && link.unsubscribe(channel).await.is_err()
        {
            self.lost(master);
        }
    }

    /// `channel` is no longer listened to where it was.
    pub fn homeless(&mut self, channel: String) {
        if self.home.remove(&channel).is_some() {
            self.homeless.insert(channel);
        }
    }

    /// The connection `link` to `master` ended: its channels are homeless. Nothing, if a newer
    /// connection to `master` has been made since.
    pub fn ended(&mut self, master: SocketAddr, link: u64) {
        if self
            .links
            .get(&master)
            .is_some_and(|current| current.id == link)
        {
            self.lost(master);
        }
    }

    /// The connection to `master` is given up: its channels are homeless.
    fn lost(&mut self, master: SocketAddr) {
        if self.links.remove(&master).is_some() {
            warn!(%master, "lost a shard's pub/sub connection");
        }
        let moved: Vec<String> = self
            .home
            .iter()
            .filter(|(_, at)| **at == master)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in moved {
            self.home.remove(&channel);
            self.homeless.insert(channel);
        }
    }

    /// Pings every connection; one that left the last ping unanswered is lost. Returns how many
    /// were.
    pub async fn ping(&mut self) -> usize {
        let mut silent = Vec::new();
        for (master, link) in &mut self.links {
            if !link.ping().await {
                silent.push(*master);
            }
        }
        let silent_ones = silent.len();
        for master in silent {
            warn!(%master, "a shard's pub/sub connection stopped answering");
            self.lost(master);
        }
        silent_ones
    }

    /// Finds the homeless channels a home: reads the slot map again and subscribes each on
    /// its master. Returns the channels that Redis confirmed: what was published on them
    /// while they were homeless is lost, and their rooms are to be repaired.
    ///
    /// The slot map is read once, and each master that cannot be reached is tried once: while a
    /// master is down and its replica not yet promoted, its rooms' channels (hundreds, on a busy
    /// node) stay homeless at the cost of one `CLUSTER SLOTS` and one refused connection a
    /// tick, not one of each per channel, which would keep the bus from passing on the other
    /// rooms' events.
    pub async fn rehome(&mut self) -> Vec<String> {
        if self.homeless.is_empty() {
            return Vec::new();
        }
        let Some(owners) = self.read_slots().await else {
            return Vec::new();
        };
        self.owners = owners;
        let homeless: Vec<String> = self.homeless.drain().collect();
        let mut unreachable = HashSet::new();
        let mut waiting = Vec::new();
        for channel in homeless {
            let master = self.master_of(&channel).await;
            if master.is_none_or(|master| unreachable.contains(&master)) {
                self.homeless.insert(channel);
                continue;
            }
            let (confirm, confirmed) = oneshot::channel();
            self.subscribe(channel.clone(), Some(confirm)).await;
            if self.homeless.contains(&channel) {
                unreachable.extend(master);
            }
            waiting.push((channel, confirmed));
        }
        let mut placed = Vec::new();
        for (channel, confirmed) in waiting {
            match tokio::time::timeout(ANSWER_TIMEOUT, confirmed).await {
                Ok(Ok(true)) => placed.push(channel),
                _ => self.homeless(channel),
            }
        }
        if !placed.is_empty() {
            info!(
                channels = placed.len(),
                "listening again where the channels' slots are"
            );
        }
        placed
    }

    /// The master of `channel`'s slot and the connection to it, if both can be had now.
    async fn place(&mut self, channel: &str) -> Option<(SocketAddr, &mut ShardLink)> {
        let master = self.master_of(channel).await?;
        Some((master, self.link(master).await?))
    }

    /// The master that owns `channel`'s slot, reading the slot map if it is not known.
    async fn master_of(&mut self, channel: &str) -> Option<SocketAddr> {
        if self.owners.is_empty() {
            self.owners = self.read_slots().await?;
        }
        let slot = slot_of(channel);
        self.owners
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, master)| *master)
    }

    /// `CLUSTER SLOTS`, from the first seed that answers.
    async fn read_slots(&self) -> Option<Vec<(u16, u16, SocketAddr)>> {
        for seed in &self.seeds {
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
                let mut connection = seed.get_multiplexed_async_connection().await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut connection)
                    .await
            })
            .await;
            if let Ok(Ok(Value::Array(ranges))) = answer {
                return Some(ranges.iter().filter_map(slot_range).collect());
            }
        }
        warn!("no seed of the cluster said where its slots are");
        None
    }

    /// The connection to `master`, made if there is none.
    async fn link(&mut self, master: SocketAddr) -> Option<&mut ShardLink> {
        if !self.links.contains_key(&master) {
            self.next_link += 1;
            match ShardLink::connect(master, self.next_link, self.heard.clone()).await {
                Ok(link) => {
                    self.links.insert(master, link);
                }
                Err(err) => {
                    // The slot map may be stale: the channel waits for a home, and the next
                    // `rehome` reads the map again.
                    warn!(%master, cause = %err, "cannot reach a shard for pub/sub");
                    return None;
                }
            }
        }
        self.links.get_mut(&master)
    }
}

/// One range of `CLUSTER SLOTS`: `[first, last, [ip, port, id], replicas…]`.
pub(super) fn slot_range(range: &Value) -> Option<(u16, u16, SocketAddr)> {
    let Value::Array(parts) = range else {
        return None;
    };
    let number = |value: Option<&Value>| match value {
        Some(Value::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    };
    let (first, last) = (number(parts.first())?, number(parts.get(1))?);
    let Some(Value::Array(master)) = parts.get(2) else {
        return None;
    };
    let ip = match master.first()? {
        Value::BulkString(ip) => String::from_utf8_lossy(ip).into_owned(),
        _ => return None,
    };
    let port = number(master.get(1))?;
    let addr = format!("{ip}:{port}").parse().ok()?;
    Some((first, last, addr))
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    /// The slots Redis gives (`CLUSTER KEYSLOT`): the CRC16 check value, a key whose hash
    /// tag decides, and an empty tag, which does not.
    #[test]
    fn slots_are_computed_as_redis_computes_them() {
        assert_eq!(slot_of("123456789"), 0x31C3);
        assert_eq!(slot_of("chat:{ABC123}:room"), slot_of("ABC123"));
        assert_eq!(slot_of("chat:{ABC123}:ch"), slot_of("chat:{ABC123}:log"));
        assert_eq!(slot_of("foo{}bar"), slot_of("foo{}bar"));
        assert_ne!(slot_of("foo{}bar"), slot_of(""));
    }
}
