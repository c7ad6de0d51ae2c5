//! The Redis Cluster harness itself (`tests/common/cluster.rs`), on a real local cluster: it
//! forms with three masters and three replicas, hashes keys to slots as Redis does, counts what
//! crosses the cluster bus, and survives a failover, a killed master and a slot migration with
//! the keys readable from their new owner. The cluster tests of chat-server rely on each of
//! these, and on the facts about sharded pub/sub and migrations pinned here.
//!
//! Needs `/usr/bin/redis-server` (Debian package `redis-server`): without it these tests fail
//! when the `CI` environment variable is set and otherwise print that they skipped.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use chat_server::types::RoomCode;
use common::cluster::{RedisCluster, SLOTS, slot_of};
use common::redis::{RedisClient, Reply, redis_available};

fn ok() -> Reply {
    Reply::Status("OK".into())
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Some(text.into()))
}

/// The `n`th of a fixed series of room codes, spread over the alphabet as the server's random
/// ones are (a multiplicative walk, so that neighbours differ in every place).
fn room_code(n: u64) -> String {
    let alphabet = RoomCode::ALPHABET;
    let base = alphabet.len() as u64;
    let mut rest = n.wrapping_mul(2_654_435_761) % base.pow(6);
    (0..6)
        .map(|_| {
            let digit = usize::try_from(rest % base).expect("a digit is below the base");
            rest /= base;
            char::from(alphabet[digit])
        })
        .collect()
}

/// The next message pushed to `subscriber`.
async fn next_push(subscriber: &mut RedisClient) -> Reply {
    tokio::time::timeout(common::PATIENCE, subscriber.reply())
        .await
        .expect("a message within the patience period")
        .expect("the subscriber's connection is open")
}

/// The key of room `code`'s hash, as the server names it.
fn room_key(code: &str) -> String {
    format!("chat:{{{code}}}:room")
}

/// A room code whose slot the master at `master` owns.
async fn room_code_on(cluster: &RedisCluster, master: SocketAddr) -> String {
    for n in 0.. {
        let code = room_code(n);
        if cluster.master_of_slot(slot_of(&room_key(&code))).await == master {
            return code;
        }
    }
    unreachable!("the series of room codes is endless")
}

/// Writes `value` at `key` on the master at `master` and waits until its replica has it too
/// (`WAIT`), so that a failover cannot lose it.
async fn set_replicated(cluster: &RedisCluster, master: SocketAddr, key: &str, value: &str) {
    assert_eq!(cluster.command(master, &["SET", key, value]).await, ok());
    assert_eq!(
        cluster.command(master, &["WAIT", "1", "10000"]).await,
        Reply::Integer(1),
        "the replica of {master} acknowledges the write"
    );
}

/// The cluster forms with three masters that share the slots, each with one replica in sync;
/// every node says `cluster_state:ok` and knows the other five; every port it uses, client and
/// bus, is below 32768; a key is served by its slot's master and redirected (`MOVED`) by the
/// others; the seeds are the masters' URLs; and once the cluster is dropped, its nodes are gone.
#[tokio::test]
async fn cluster_forms_with_three_masters_each_with_a_replica_in_sync() {
    if !redis_available("cluster_forms_with_three_masters_each_with_a_replica_in_sync") {
        return;
    }
    let cluster = RedisCluster::start().await;
    let masters = cluster.masters().await;
    let replicas = cluster.replicas().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let nodes = cluster.running_nodes();
    assert_eq!(
        nodes.iter().collect::<BTreeSet<_>>(),
        masters.iter().chain(&replicas).collect(),
        "every node is a master or a replica"
    );

    // Every slot has an owner, and each master owns a third.
    let owners = [0, SLOTS / 3, 2 * SLOTS / 3, SLOTS - 1];
    let mut owners_seen = BTreeSet::new();
    for slot in owners {
        owners_seen.insert(cluster.master_of_slot(slot).await);
    }
    assert_eq!(owners_seen, masters.iter().copied().collect());

    for (master, replica) in masters.iter().zip(&replicas) {
        assert_eq!(cluster.replica_of(*master).await, Some(*replica));
        let Reply::Bulk(Some(replication)) =
            cluster.command(*replica, &["INFO", "replication"]).await
        else {
            panic!("INFO replication is text");
        };
        for line in [
            "role:slave".to_string(),
            format!("master_port:{}", master.port()),
            "master_link_status:up".to_string(),
        ] {
            assert!(
                replication.lines().any(|l| l.trim_end() == line),
                "{replica} has {line}:\n{replication}"
            );
        }
    }

    for &node in &nodes {
        let Reply::Bulk(Some(info)) = cluster.command(node, &["CLUSTER", "INFO"]).await else {
            panic!("CLUSTER INFO is text");
        };
        for line in [
            "cluster_state:ok",
            "cluster_known_nodes:6",
            "cluster_size:3",
        ] {
            assert!(
                info.lines().any(|l| l.trim_end() == line),
                "{node} says {line}:\n{info}"
            );
        }
        let Reply::Bulk(Some(known)) = cluster.command(node, &["CLUSTER", "NODES"]).await else {
            panic!("CLUSTER NODES is text");
        };
        for line in known.lines() {
            // <id> 127.0.0.1:PORT@BUSPORT ...
            let address = line.split(' ').nth(1).expect("an address");
            let (port, bus_port) = address
                .strip_prefix("127.0.0.1:")
                .and_then(|ports| ports.split_once('@'))
                .unwrap_or_else(|| panic!("{address} is on 127.0.0.1 with a bus port"));
            for port in [port, bus_port] {
                let port: u16 = port.parse().expect("a port");
                assert!(port < 32_768, "{line}");
            }
        }
    }

    let key = room_key("ABC123");
    let owner = cluster.master_of_slot(slot_of(&key)).await;
    assert_eq!(cluster.command(owner, &["SET", &key, "here"]).await, ok());
    assert_eq!(cluster.command(owner, &["GET", &key]).await, bulk("here"));
    for &other in masters.iter().filter(|&&master| master != owner) {
        assert_eq!(
            cluster.command(other, &["GET", &key]).await,
            Reply::Error(format!("MOVED {} {owner}", slot_of(&key))),
        );
    }

    let seeds: Vec<_> = masters.iter().map(|m| format!("redis://{m}/")).collect();
    assert_eq!(cluster.seeds().await, seeds.join(","));

    drop(cluster);
    for node in nodes {
        assert!(
            tokio::net::TcpStream::connect(node).await.is_err(),
            "{node} is gone with the cluster"
        );
    }
}

/// `slot_of` is Redis's key hashing: the published CRC16 check value, the hash-tag rules
/// (first `{`, first `}` after it, an empty tag hashes the whole key), and agreement with
/// `CLUSTER KEYSLOT` on hundreds of room keys, which land on every master.
#[tokio::test]
async fn slot_of_agrees_with_cluster_keyslot() {
    // CRC-16/XMODEM's check value is 0x31C3 for "123456789"; 0x31C3 mod 16384 = 12739.
    assert_eq!(slot_of("123456789"), 12_739);
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_eq!(slot_of("chat:{ABC123}:room"), slot_of("ABC123"));
    assert_ne!(
        slot_of("foo{}{bar}"),
        slot_of("bar"),
        "an empty tag is no tag"
    );
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));

    if !redis_available("slot_of_agrees_with_cluster_keyslot") {
        return;
    }
    let cluster = RedisCluster::start().await;
    let node = cluster.running_nodes()[0];
    let mut keys: Vec<String> = [
        "",
        "123456789",
        "foo",
        "{",
        "}",
        "{}",
        "}{",
        "{a",
        "a}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "chat:{board:0}:live",
        "chat:sess:{00ff}",
        "é{ü}",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    keys.extend((0..300).map(|n| room_key(&room_code(n))));
    let mut owners = BTreeSet::new();
    for key in &keys {
        assert_eq!(
            cluster.command(node, &["CLUSTER", "KEYSLOT", key]).await,
            Reply::Integer(slot_of(key).into()),
            "the slot of {key:?}"
        );
        owners.insert(cluster.master_of_slot(slot_of(key)).await);
    }
    assert_eq!(owners.len(), 3, "room keys land on every master");
}

/// What the chat-server's cluster mode leans on: a script may `SPUBLISH` to a channel of its
/// own slot without declaring it, and a subscriber of the shard receives it, with nothing
/// counted as a plain publish on the cluster bus; a script's `SPUBLISH` to another slot's
/// channel is refused; and one plain `PUBLISH` is sent to each of the five other nodes, which
/// `cluster_stats_messages_publish_sent` counts.
#[tokio::test]
async fn spublish_in_a_script_stays_in_its_shard_and_publish_goes_to_every_node() {
    if !redis_available("spublish_in_a_script_stays_in_its_shard_and_publish_goes_to_every_node") {
        return;
    }
    let cluster = RedisCluster::start().await;
    let key = room_key("ABC123");
    let channel = "chat:{ABC123}:ch";
    let master = cluster.master_of_slot(slot_of(&key)).await;

    let mut subscriber = cluster.client(master).await;
    assert_eq!(
        subscriber
            .command(&["SSUBSCRIBE", channel])
            .await
            .expect("an answer"),
        Reply::Array(Some(vec![
            bulk("ssubscribe"),
            bulk(channel),
            Reply::Integer(1)
        ]))
    );

    let before = cluster.stats().await;
    let script = "redis.call('SET', KEYS[1], ARGV[2]) \
                  return redis.call('SPUBLISH', ARGV[1], ARGV[2])";
    assert_eq!(
        cluster
            .command(master, &["EVAL", script, "1", &key, channel, "hello"])
            .await,
        Reply::Integer(1),
        "one subscriber received it"
    );
    assert_eq!(
        next_push(&mut subscriber).await,
        Reply::Array(Some(vec![bulk("smessage"), bulk(channel), bulk("hello")]))
    );
    let after = cluster.stats().await;
    assert_eq!(after.publish_sent, before.publish_sent);
    assert!(
        after.cpu >= before.cpu && after.cpu > Duration::ZERO,
        "the masters' CPU time is counted: {before:?} then {after:?}"
    );

    let elsewhere = room_code_on(
        &cluster,
        *cluster
            .masters()
            .await
            .iter()
            .find(|&&other| other != master)
            .expect("another master"),
    )
    .await;
    let reply = cluster
        .command(
            master,
            &[
                "EVAL",
                script,
                "1",
                &key,
                &format!("chat:{{{elsewhere}}}:ch"),
                "lost",
            ],
        )
        .await;
    let Reply::Error(refusal) = reply else {
        panic!("SPUBLISH to another slot's channel is refused, not {reply:?}");
    };
    assert!(refusal.contains("non local key"), "{refusal}");

    assert_eq!(
        cluster
            .command(master, &["PUBLISH", channel, "broadcast"])
            .await,
        Reply::Integer(0),
        "a plain PUBLISH reaches no sharded subscriber"
    );
    assert_eq!(cluster.stats().await.publish_sent, after.publish_sent + 5);
}

/// A manual failover (`CLUSTER FAILOVER` on a replica) leaves the cluster ok with the replica
/// as the master of the slots: it serves the keys written before, the old master follows it,
/// redirects to it, and has pushed `sunsubscribe` to its shard channels' subscribers.
#[tokio::test]
async fn failover_makes_the_replica_the_master_of_the_keys() {
    if !redis_available("failover_makes_the_replica_the_master_of_the_keys") {
        return;
    }
    let cluster = RedisCluster::start().await;
    let key = room_key("FA1L0V");
    let slot = slot_of(&key);
    let master = cluster.master_of_slot(slot).await;
    set_replicated(&cluster, master, &key, "kept").await;
    let replica = cluster.replica_of(master).await.expect("a replica");
    let channel = "chat:{FA1L0V}:ch";
    let mut subscriber = cluster.client(master).await;
    assert_eq!(
        subscriber
            .command(&["SSUBSCRIBE", channel])
            .await
            .expect("an answer"),
        Reply::Array(Some(vec![
            bulk("ssubscribe"),
            bulk(channel),
            Reply::Integer(1)
        ]))
    );

    cluster.failover(replica).await;
    assert_eq!(
        next_push(&mut subscriber).await,
        Reply::Array(Some(vec![
            bulk("sunsubscribe"),
            bulk(channel),
            Reply::Integer(0)
        ])),
        "the demoted master drops its shard's subscribers"
    );

    assert_eq!(cluster.master_of_slot(slot).await, replica);
    assert_eq!(cluster.command(replica, &["GET", &key]).await, bulk("kept"));
    assert_eq!(cluster.replica_of(replica).await, Some(master));
    assert_eq!(
        cluster.command(master, &["GET", &key]).await,
        Reply::Error(format!("MOVED {slot} {replica}"))
    );
    assert!(cluster.masters().await.contains(&replica));
}

/// A master killed with SIGKILL is replaced by its replica once the others agree it failed:
/// the cluster is ok again with three masters, the promoted one serving the keys written
/// before and taking new writes, with no replica of its own until the killed master is
/// started again and rejoins as its replica, with the write it missed.
#[tokio::test]
async fn killed_master_is_replaced_by_its_replica() {
    if !redis_available("killed_master_is_replaced_by_its_replica") {
        return;
    }
    let mut cluster = RedisCluster::start().await;
    let key = room_key("K1LLED");
    let slot = slot_of(&key);
    let master = cluster.master_of_slot(slot).await;
    set_replicated(&cluster, master, &key, "kept").await;
    let replica = cluster.replica_of(master).await.expect("a replica");

    let promoted = cluster.kill_master(master).await;

    assert_eq!(promoted, replica);
    assert!(
        tokio::net::TcpStream::connect(master).await.is_err(),
        "{master} is dead"
    );
    assert_eq!(cluster.master_of_slot(slot).await, promoted);
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.contains(&promoted) && !masters.contains(&master));
    assert_eq!(cluster.replica_of(promoted).await, None);
    assert_eq!(
        cluster.command(promoted, &["GET", &key]).await,
        bulk("kept")
    );
    assert_eq!(cluster.command(promoted, &["SET", &key, "new"]).await, ok());

    cluster.restart(master).await;
    assert_eq!(cluster.replica_of(promoted).await, Some(master));
    assert_eq!(cluster.master_of_slot(slot).await, promoted);
    let mut reader = cluster.client(master).await;
    assert_eq!(
        reader.command(&["READONLY"]).await.expect("an answer"),
        ok()
    );
    assert_eq!(
        reader.command(&["GET", &key]).await.expect("an answer"),
        bulk("new"),
        "the returning master follows the promoted one"
    );
}

/// A slot holding keys moves to another master in steps a test can act between. While it is
/// MIGRATING, the owner serves the keys it still holds, answers `ASK` for a missing one and
/// `TRYAGAIN` to a script that declares both (as a script declaring a room's channel would
/// get), and runs a room's step (its keys declared, its channel an argument) that `SPUBLISH`es
/// to the slot's subscribers. Once the keys are moved, the owner answers `ASK` for them and for
/// the step, and the target serves them after `ASKING`; a step run there publishes to no one,
/// the subscribers being still on the owner. Once finished, the old owner pushes
/// `sunsubscribe` to them and answers `MOVED`, the target owns the slot and every key, and
/// the cluster is ok. `migrate_slot` then moves it back in one go.
#[tokio::test]
async fn migration_moves_a_slot_with_its_keys() {
    if !redis_available("migration_moves_a_slot_with_its_keys") {
        return;
    }
    let cluster = RedisCluster::start().await;
    let code = "M1GRAT";
    let keys = [
        room_key(code),
        format!("chat:{{{code}}}:log"),
        format!("chat:{{{code}}}:seq"),
    ];
    let missing = format!("chat:{{{code}}}:missing");
    let slot = slot_of(&keys[0]);
    let from = cluster.master_of_slot(slot).await;
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|&&master| master != from)
        .expect("another master");
    for key in &keys {
        assert_eq!(cluster.command(from, &["SET", key, key]).await, ok());
    }

    let channel = format!("chat:{{{code}}}:ch");
    let mut subscriber = cluster.client(from).await;
    assert_eq!(
        subscriber
            .command(&["SSUBSCRIBE", &channel])
            .await
            .expect("an answer"),
        Reply::Array(Some(vec![
            bulk("ssubscribe"),
            bulk(&channel),
            Reply::Integer(1)
        ]))
    );
    // A room's step: its keys declared, its channel an argument.
    let step = "redis.call('GET', KEYS[1]) return redis.call('SPUBLISH', ARGV[1], ARGV[2])";

    let migration = cluster.begin_migration(slot, to).await;
    let ask = Reply::Error(format!("ASK {slot} {to}"));
    assert_eq!(
        cluster.command(from, &["GET", &keys[0]]).await,
        bulk(&keys[0])
    );
    assert_eq!(cluster.command(from, &["GET", &missing]).await, ask);
    let script = "return redis.call('GET', KEYS[1])";
    let Reply::Error(refusal) = cluster
        .command(from, &["EVAL", script, "2", &keys[0], &missing])
        .await
    else {
        panic!("a script with a key not there yet is refused");
    };
    assert!(refusal.starts_with("TRYAGAIN"), "{refusal}");
    assert_eq!(
        cluster
            .command(from, &["EVAL", step, "1", &keys[0], &channel, "during"])
            .await,
        Reply::Integer(1),
        "a step whose keys are all still on the owner runs and publishes"
    );
    assert_eq!(
        next_push(&mut subscriber).await,
        Reply::Array(Some(vec![bulk("smessage"), bulk(&channel), bulk("during")]))
    );

    assert_eq!(migration.move_keys().await, keys.len());
    assert_eq!(cluster.command(from, &["GET", &keys[0]]).await, ask);
    let mut asking = cluster.client(to).await;
    assert_eq!(asking.command(&["ASKING"]).await.expect("an answer"), ok());
    assert_eq!(
        asking.command(&["GET", &keys[0]]).await.expect("an answer"),
        bulk(&keys[0])
    );
    assert_eq!(
        cluster
            .command(from, &["EVAL", step, "1", &keys[0], &channel, "moved"])
            .await,
        ask,
        "the step is sent to the target"
    );
    assert_eq!(asking.command(&["ASKING"]).await.expect("an answer"), ok());
    assert_eq!(
        asking
            .command(&["EVAL", step, "1", &keys[0], &channel, "unheard"])
            .await
            .expect("an answer"),
        Reply::Integer(0),
        "published on the target, where no one subscribes yet"
    );

    migration.finish().await;
    assert_eq!(
        next_push(&mut subscriber).await,
        Reply::Array(Some(vec![
            bulk("sunsubscribe"),
            bulk(&channel),
            Reply::Integer(0)
        ])),
        "the old owner drops the slot's subscribers"
    );
    assert_eq!(cluster.master_of_slot(slot).await, to);
    for key in &keys {
        assert_eq!(cluster.command(to, &["GET", key]).await, bulk(key));
        assert_eq!(
            cluster.command(from, &["GET", key]).await,
            Reply::Error(format!("MOVED {slot} {to}"))
        );
    }
    let slot_arg = slot.to_string();
    assert_eq!(
        cluster
            .command(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg])
            .await,
        Reply::Integer(0)
    );

    cluster.migrate_slot(slot, from).await;
    assert_eq!(cluster.master_of_slot(slot).await, from);
    for key in &keys {
        assert_eq!(cluster.command(from, &["GET", key]).await, bulk(key));
    }
}
