//! Random, truncated, forged and replayed datagrams sent to a gateway's UDP port change
//! nothing and crash nothing: the mesh keeps its sessions (no new handshake), its endpoint
//! (no roaming to the sender of replays), its byte counters (only legitimate bytes count),
//! the garbage is dropped and counted by reason, and none of it is answered. Needs root,
//! `tcpdump` and `python3`.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use isthmus_lab::{plan, wait_for, Lab};
use serde_json::Value;
use support::{
    assert_pings, num, pcap_datagrams, peer, random_bytes, status, wait_ping, wg_type, Capture,
    MESH_UP_TIMEOUT,
};

/// The attacker: a host on the WAN beside the gateways.
const JUNK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 200);

/// Sends the length-prefixed datagrams of file argv[1] to argv[2]:argv[3], pausing briefly
/// every 50 so the gateway's socket buffer never overflows; then listens 1 s for anything
/// sent back. Prints `<sent> <answers>` and, per answer, its first byte.
const BLASTER: &str = r#"import socket,sys,struct,time
data=open(sys.argv[1],'rb').read()
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind(('0.0.0.0',0))
dst=(sys.argv[2],int(sys.argv[3]))
i=0
n=0
while i<len(data):
    (l,)=struct.unpack_from('>H',data,i)
    i+=2
    s.sendto(data[i:i+l],dst)
    i+=l
    n+=1
    if n%50==0:
        time.sleep(0.003)
s.settimeout(1)
answers=[]
try:
    while True:
        d,a=s.recvfrom(65535)
        answers.append('%s:%d type %d len %d'%(a[0],a[1],d[0] if d else -1,len(d)))
except socket.timeout:
    pass
print(n,len(answers))
for a in answers:
    print(a)
"#;

/// Drop reasons a bogus datagram may be counted under.
const REJECT_REASONS: [&str; 6] = [
    "malformed",
    "unknown_peer",
    "auth_failed",
    "replay",
    "handshake_rejected",
    "under_load",
];

fn dropped(lab: &Lab, i: usize) -> BTreeMap<String, u64> {
    let s = status(lab, i);
    s["dropped"]
        .as_object()
        .unwrap_or_else(|| panic!("no dropped map in tunctl status: {s}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn rejected(d: &BTreeMap<String, u64>) -> u64 {
    REJECT_REASONS
        .iter()
        .map(|r| d.get(*r).copied().unwrap_or(0))
        .sum()
}

/// Counter `field` of the UDP MIB in `ns` (`/proc/net/snmp`), e.g. `InDatagrams` (delivered
/// to a socket) or `RcvbufErrors` (dropped by the kernel because a socket's receive buffer
/// was full: the gateway never sees those, so it cannot count them).
fn udp_mib(lab: &Lab, ns: &str, field: &str) -> u64 {
    let snmp = lab.run(ns, &["cat", "/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Udp {field} in /proc/net/snmp of {ns}"))
}

/// The state of a session that garbage must not touch.
#[derive(Debug, PartialEq)]
struct Session {
    endpoint: Value,
    handshakes: u64,
    last_handshake: Value,
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
}

fn session(lab: &Lab, i: usize, name: &str) -> Session {
    let p = peer(lab, i, name);
    Session {
        endpoint: p["endpoint"].clone(),
        handshakes: num(&p, "handshakes"),
        last_handshake: p["last_handshake_unix_ms"].clone(),
        rx_bytes: num(&p, "rx_bytes"),
        rx_packets: num(&p, "rx_packets"),
        tx_bytes: num(&p, "tx_bytes"),
    }
}

/// Sends `datagrams` from the junk host to gw2's port in one go; waits until gw2 has counted
/// them all (or 10 s); returns the drop counters that grew. Asserts nothing answered.
fn blast(lab: &Lab, junk: &str, phase: &str, datagrams: &[Vec<u8>]) -> BTreeMap<String, u64> {
    let gw2 = lab.gw_ns(2);
    let file = lab.dir().join(format!("garbage-{phase}.bin"));
    let mut bytes = Vec::new();
    for d in datagrams {
        bytes.extend_from_slice(&u16::try_from(d.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(d);
    }
    std::fs::write(&file, bytes).unwrap();

    let before = dropped(lab, 2);
    let rcvbuf_before = udp_mib(lab, &gw2, "RcvbufErrors");
    let delivered_before = udp_mib(lab, &gw2, "InDatagrams");
    let out = support::python(
        lab,
        junk,
        BLASTER,
        &[
            &file.to_string_lossy(),
            &plan::wan_addr(2).to_string(),
            &plan::LISTEN_PORT.to_string(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut first = stdout.lines().next().unwrap_or("").split_whitespace();
    let sent: u64 = first.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert_eq!(sent, datagrams.len() as u64, "blaster output: {stdout}");
    let answers: u64 = first
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(
        answers, 0,
        "phase {phase}: gw2 answered the garbage sender:\n{stdout}"
    );

    // Everything the kernel handed the gateway is counted once it has been processed.
    let lost = udp_mib(lab, &gw2, "RcvbufErrors") - rcvbuf_before;
    let expected = sent - lost;
    wait_for(
        || rejected(&delta(&dropped(lab, 2), &before)) >= expected,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(200));
    let grew = delta(&dropped(lab, 2), &before);
    // Includes the odd legitimate keepalive from gw1; for the message only.
    let delivered = udp_mib(lab, &gw2, "InDatagrams") - delivered_before;
    eprintln!(
        "phase {phase}: sent {sent}, kernel dropped {lost}, delivered {delivered} to gw2's \
         socket, gw2 drop counters grew {grew:?}"
    );
    assert!(
        lab.gateway_running(2),
        "gw2 died during phase {phase}:\n{}",
        lab.gateway_stderr(2)
    );
    assert_eq!(
        rejected(&grew),
        expected,
        "phase {phase}: {sent} bogus datagrams sent, {lost} dropped by the kernel, {delivered} \
         delivered to gw2's socket, but gw2's drop counters for {REJECT_REASONS:?} grew by \
         {grew:?}"
    );
    grew
}

fn random_len(max: usize) -> usize {
    let b = random_bytes(2);
    usize::from(u16::from_le_bytes([b[0], b[1]])) % (max + 1)
}

#[test]
fn garbage_datagrams_change_nothing() {
    let lab = support::lab(2);
    let junk = lab.add_wan_host("junk", JUNK_ADDR).unwrap();
    let (wan, gw1, pod1, pod2) = (lab.wan_ns(), lab.gw_ns(1), lab.pod_ns(1), lab.pod_ns(2));
    let (pod1_addr, pod2_addr) = (plan::pod_addr(1), plan::pod_addr(2));

    // Record real traffic into gw2, handshake included: capture from before gw1 starts
    // until the mesh carries pings both ways. gw2 runs first, so it has processed every
    // datagram recorded (an initiation it never saw would be fresh to it, not a replay).
    lab.start_gateway(2).unwrap();
    let cap = Capture::start(&lab, &wan, "c2", "real", &["udp"]);
    lab.start_gateway(1).unwrap();
    wait_ping(&lab, &pod1, pod2_addr, MESH_UP_TIMEOUT);
    assert_pings(&lab, &pod1, pod2_addr, 3);
    assert_pings(&lab, &pod2, pod1_addr, 3);
    cap.sync(&lab, &gw1, plan::wan_addr(2), 9);
    let real: Vec<Vec<u8>> = pcap_datagrams(&cap.stop())
        .into_iter()
        .filter(|d| {
            (d.src, d.sport, d.dst, d.dport)
                == (
                    plan::wan_addr(1),
                    plan::LISTEN_PORT,
                    plan::wan_addr(2),
                    plan::LISTEN_PORT,
                )
        })
        .map(|d| d.payload)
        .collect();
    let of_type = |t: u8| real.iter().filter(|p| wg_type(p) == Some(t)).count();
    let (handshake_msgs, data_msgs) = (of_type(1) + of_type(2), of_type(4));
    assert!(
        handshake_msgs >= 1 && data_msgs >= 6,
        "captured {} datagrams gw1 -> gw2: {handshake_msgs} handshake, {data_msgs} data; \
         expected a handshake message and the pings",
        real.len()
    );
    let data_with_payload: Vec<&Vec<u8>> = real
        .iter()
        .filter(|p| wg_type(p) == Some(4) && p.len() > 32)
        .collect();
    assert!(!data_with_payload.is_empty());

    let c1_before = session(&lab, 2, "c1");
    let c2_before = session(&lab, 1, "c2");
    let status_before = dropped(&lab, 2);

    // (a) Random bytes of random length 1..=1500 (empty datagrams get their own phase).
    let random: Vec<Vec<u8>> = (0..3000)
        .map(|_| random_bytes(1 + random_len(1499)))
        .collect();
    let grew_random = blast(&lab, &junk, "random", &random);

    // (b) Random bodies behind a valid-looking header [type, 0, 0, 0], at each message's
    // exact size.
    let mut typed = Vec::new();
    for _ in 0..100 {
        for (t, len) in [
            (1u8, 148),
            (2, 92),
            (3, 64),
            (4, 32),
            (4, 32 + random_len(1400)),
        ] {
            let mut d = random_bytes(len);
            d[..4].copy_from_slice(&[t, 0, 0, 0]);
            typed.push(d);
        }
    }
    let grew_typed = blast(&lab, &junk, "typed", &typed);

    // (b') Forged data messages for the live session: its real receiver index, a counter far
    // beyond any used so far, random ciphertext. Only the AEAD tag can reject them.
    let live = data_with_payload[data_with_payload.len() - 1];
    let forged: Vec<Vec<u8>> = (0..100)
        .map(|_| {
            let mut d = random_bytes(live.len());
            d[..8].copy_from_slice(&live[..8]);
            d[8..16].copy_from_slice(&(1u64 << 40 | random_len(60_000) as u64).to_le_bytes());
            d
        })
        .collect();
    let grew_forged = blast(&lab, &junk, "forged", &forged);
    assert_eq!(
        grew_forged.get("auth_failed").copied(),
        Some(forged.len() as u64),
        "forged data messages for the live session must fail authentication: {grew_forged:?}"
    );

    // (c) Every captured datagram cut short, at several lengths.
    let mut truncated = Vec::new();
    for d in &real {
        for cut in [1, 4, 8, 16, 31, d.len() / 2, d.len() - 1] {
            if cut > 0 && cut < d.len() {
                truncated.push(d[..cut].to_vec());
            }
        }
    }
    let grew_truncated = blast(&lab, &junk, "truncated", &truncated);

    // (d) Replays, byte for byte, from another address: handshake messages twice, data
    // messages three times each.
    let mut replays = Vec::new();
    for d in &real {
        let times = if wg_type(d) == Some(4) { 3 } else { 2 };
        for _ in 0..times {
            replays.push(d.clone());
        }
    }
    let grew_replay = blast(&lab, &junk, "replay", &replays);

    // Nothing changed: no session touched, no roaming to the sender of replays, and not a
    // byte of garbage counted as traffic.
    assert!(lab.gateway_running(1), "gw1 died");
    assert!(lab.gateway_running(2), "gw2 died");
    let c1_after = session(&lab, 2, "c1");
    assert_eq!(
        c1_after, c1_before,
        "gw2's session with c1 changed under garbage"
    );
    assert_eq!(
        session(&lab, 1, "c2"),
        c2_before,
        "gw1's session with c2 changed while gw2 was fed garbage"
    );

    // The sessions still carry traffic, and the counters grow by exactly the legitimate
    // packets: 5 echo requests into gw2 and 5 echo replies into gw2, 84 bytes each.
    assert_pings(&lab, &pod1, pod2_addr, 5);
    assert_pings(&lab, &pod2, pod1_addr, 5);
    let c1_final = session(&lab, 2, "c1");
    assert_eq!(
        c1_final.handshakes, c1_before.handshakes,
        "a new handshake was needed after the garbage"
    );
    assert_eq!(c1_final.last_handshake, c1_before.last_handshake);
    assert_eq!(c1_final.endpoint, c1_before.endpoint);
    assert_eq!(
        c1_final.rx_bytes - c1_before.rx_bytes,
        10 * 84,
        "gw2's rx_bytes from c1 grew by more than the 10 legitimate 84-byte pings"
    );
    assert_eq!(c1_final.rx_packets - c1_before.rx_packets, 10);

    let total = delta(&dropped(&lab, 2), &status_before);
    eprintln!(
        "gw2 drop counters grew by {total:?} (random {grew_random:?}, typed {grew_typed:?}, \
         forged {grew_forged:?}, truncated {grew_truncated:?}, replay {grew_replay:?})"
    );
    // Random bytes essentially never start with a valid [type, 0, 0, 0] header.
    assert_eq!(
        grew_random.get("malformed").copied(),
        Some(random.len() as u64),
        "random datagrams must all count as malformed: {grew_random:?}"
    );
    // 100 forged initiations cannot carry a valid MAC1.
    assert!(
        grew_typed.get("auth_failed").copied().unwrap_or(0) >= 100,
        "forged handshake initiations must fail their MAC: {grew_typed:?}"
    );
    assert!(
        grew_replay.get("replay").copied().unwrap_or(0) >= 3 * data_msgs as u64,
        "{data_msgs} data messages replayed 3 times each, replay counter grew {grew_replay:?}"
    );

    // (e) Empty datagrams: as malformed as it gets, and dropped and counted like the rest.
    // Last, so that everything above is checked even while this fails.
    let empty: Vec<Vec<u8>> = (0..10).map(|_| Vec::new()).collect();
    let grew_empty = blast(&lab, &junk, "empty", &empty);
    assert_eq!(grew_empty.get("malformed").copied(), Some(10));
    assert_eq!(session(&lab, 2, "c1").handshakes, c1_before.handshakes);
}
