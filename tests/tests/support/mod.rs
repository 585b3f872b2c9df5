//! Helpers shared by the root-tier end-to-end tests in `interop.rs`, `capture.rs`,
//! `garbage.rs`, `bad_config.rs` and `tunctl.rs`: building labs and meshes, asking gateways
//! for their peers, packet captures with `tcpdump` and a small pcap reader, and small Python
//! one-liners for sending UDP.
//!
//! Each test binary uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use isthmus_lab::{plan, wait_for, ChildGuard, Lab, Signal};
use serde_json::Value;

/// How long a fresh mesh may take to pass its first ping (handshake included).
pub const MESH_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// A lab of `clusters` clusters; panics with the whole error chain if it cannot be built.
pub fn lab(clusters: usize) -> Lab {
    Lab::builder()
        .clusters(clusters)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"))
}

/// Starts every cluster's gateway with the lab's default full-mesh config.
pub fn start_gateways(lab: &Lab) {
    for i in 1..=lab.clusters() {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("failed to start gateway {i}: {e:#}"));
    }
}

/// Waits until one ping from `ns` to `addr` is answered; panics after `timeout`.
pub fn wait_ping(lab: &Lab, ns: &str, addr: Ipv4Addr, timeout: Duration) {
    let ok = wait_for(|| lab.ping(ns, addr, 1).unwrap_or(0) == 1, timeout);
    if !ok {
        lab.dump_gateway_logs();
        panic!("{ns} could not ping {addr} within {timeout:?}");
    }
}

/// Pings `count` times and asserts every echo came back.
pub fn assert_pings(lab: &Lab, ns: &str, addr: Ipv4Addr, count: u32) {
    let received = lab
        .ping(ns, addr, count)
        .unwrap_or_else(|e| panic!("ping {addr} from {ns}: {e:#}"));
    assert_eq!(
        received, count,
        "{ns} -> {addr}: {received}/{count} replies"
    );
}

/// `tunctl peers -o json` of gateway `i`.
pub fn peers(lab: &Lab, i: usize) -> Vec<Value> {
    lab.peers_json(i)
}

/// Gateway `i`'s peer named `name`, from `tunctl peers -o json`.
pub fn peer(lab: &Lab, i: usize, name: &str) -> Value {
    lab.peer_json(i, name)
}

/// `tunctl status -o json` of gateway `i`.
pub fn status(lab: &Lab, i: usize) -> Value {
    lab.status_json(i)
}

/// A numeric field of a JSON object, panicking with the object if it is missing.
pub fn num(v: &Value, field: &str) -> u64 {
    isthmus_lab::json_u64(v, field)
}

/// Where a tool is: on `PATH`, else in `~/.cargo/bin` (where `cargo install` puts
/// `boringtun-cli`, and `sudo`/test harnesses may have dropped it from `PATH`).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH nor in ~/.cargo/bin"))
}

/// `n` bytes from the kernel's RNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `python3 -c SCRIPT ARGS…` in `ns`; panics unless it exits 0.
pub fn python(lab: &Lab, ns: &str, script: &str, args: &[&str]) -> Output {
    let mut argv = vec!["python3", "-c", script];
    argv.extend_from_slice(args);
    let out = lab
        .exec(ns, &argv)
        .unwrap_or_else(|e| panic!("python3 in {ns}: {e:#}"));
    assert!(
        out.status.success(),
        "python3 in {ns} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends one UDP datagram carrying `payload` from `ns` to `addr:port` (nothing needs to
/// listen: the datagram is on the wire either way).
pub fn send_udp(lab: &Lab, ns: &str, addr: Ipv4Addr, port: u16, payload: &[u8]) {
    const SCRIPT: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.sendto(bytes.fromhex(sys.argv[3]),(sys.argv[1],int(sys.argv[2])))
"#;
    python(
        lab,
        ns,
        SCRIPT,
        &[&addr.to_string(), &port.to_string(), &hex(payload)],
    );
}

/// A TCP server that echoes every byte back until the client half-closes, then closes.
const TCP_ECHO_SERVER: &str = r#"import socket,sys
l=socket.socket()
l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
l.bind(('0.0.0.0',int(sys.argv[1])))
l.listen(8)
print('ready',flush=True)
while True:
    c,_=l.accept()
    while True:
        d=c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
"#;

/// Sends N random bytes to an echo server while reading them back; prints
/// `<bytes echoed> <equal to what was sent>`.
const TCP_ECHO_CLIENT: &str = r#"import socket,sys,os,threading
n=int(sys.argv[3])
data=os.urandom(n)
c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=20)
def send():
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
t=threading.Thread(target=send)
t.start()
got=bytearray()
while True:
    d=c.recv(65536)
    if not d: break
    got+=d
t.join()
print(len(got),got==data)
"#;

/// Starts a TCP echo server on `port` in `ns` and waits until it listens.
pub fn tcp_echo_server(lab: &Lab, ns: &str, port: u16) -> ChildGuard {
    spawn_ready(lab, ns, "tcp-echo", TCP_ECHO_SERVER, &[&port.to_string()])
}

/// Over one TCP connection from `ns` to `addr:port` (a [`tcp_echo_server`]), sends `bytes`
/// random bytes and reads them back; asserts every byte came back unchanged. Moves `bytes`
/// through the path in each direction.
pub fn tcp_echo(lab: &Lab, ns: &str, addr: Ipv4Addr, port: u16, bytes: usize) {
    let out = python(
        lab,
        ns,
        TCP_ECHO_CLIENT,
        &[&addr.to_string(), &port.to_string(), &bytes.to_string()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("{bytes} True"),
        "TCP echo of {bytes} bytes {ns} -> {addr}:{port}"
    );
}

/// A UDP server that sends every datagram back to its sender.
const UDP_ECHO_SERVER: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind(('0.0.0.0',int(sys.argv[1])))
print('ready',flush=True)
while True:
    d,a=s.recvfrom(65535)
    s.sendto(d,a)
"#;

/// Sends hex payload argv[3] to argv[1]:argv[2] (up to 5 tries, 1 s apart) and prints the
/// first answer in hex, or nothing.
const UDP_ECHO_CLIENT: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.settimeout(1)
m=bytes.fromhex(sys.argv[3])
for _ in range(5):
    s.sendto(m,(sys.argv[1],int(sys.argv[2])))
    try:
        d,_=s.recvfrom(65535)
        print(d.hex())
        break
    except socket.timeout:
        pass
"#;

/// Starts a UDP echo server on `port` in `ns` and waits until it is bound.
pub fn udp_echo_server(lab: &Lab, ns: &str, port: u16) -> ChildGuard {
    spawn_ready(lab, ns, "udp-echo", UDP_ECHO_SERVER, &[&port.to_string()])
}

/// Sends `payload` from `ns` to a [`udp_echo_server`] at `addr:port`; asserts it came back.
pub fn udp_echo(lab: &Lab, ns: &str, addr: Ipv4Addr, port: u16, payload: &[u8]) {
    let out = python(
        lab,
        ns,
        UDP_ECHO_CLIENT,
        &[&addr.to_string(), &port.to_string(), &hex(payload)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hex(payload),
        "UDP echo {ns} -> {addr}:{port} did not come back"
    );
}

/// Starts `python3 -u -c SCRIPT ARGS…` in `ns` and waits until it prints `ready`.
pub fn spawn_ready(lab: &Lab, ns: &str, name: &str, script: &str, args: &[&str]) -> ChildGuard {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", script]).args(args);
    let mut guard = lab
        .spawn_named(ns, name, &cmd)
        .unwrap_or_else(|e| panic!("failed to start {name} in {ns}: {e:#}"));
    let ready = wait_for(
        || guard.stdout().contains("ready") || !guard.is_running(),
        Duration::from_secs(10),
    );
    assert!(
        ready && guard.is_running(),
        "{name} in {ns} did not get ready:\n{}",
        guard.stderr()
    );
    guard
}

/// A running `tcpdump -w` writing every packet as it arrives (`-U --immediate-mode`).
pub struct Capture {
    guard: ChildGuard,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -w <lab dir>/NAME.pcap FILTER…` in `ns` and waits until it
    /// says it is listening. Stays root (`-Z root`) so it can write into the lab's 0700 dir.
    pub fn start(lab: &Lab, ns: &str, iface: &str, name: &str, filter: &[&str]) -> Capture {
        let file = lab.dir().join(format!("{name}.pcap"));
        let mut cmd = Command::new("tcpdump");
        cmd.args([
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
        ])
        .arg(&file)
        .args(filter);
        let mut guard = lab
            .spawn_named(ns, &format!("tcpdump-{name}"), &cmd)
            .unwrap_or_else(|e| panic!("failed to start tcpdump: {e:#}"));
        let ready = wait_for(
            || guard.stderr().contains("listening on") || !guard.is_running(),
            Duration::from_secs(10),
        );
        assert!(
            ready && guard.is_running(),
            "tcpdump on {ns}/{iface} did not start listening:\n{}",
            guard.stderr()
        );
        Capture { guard, file }
    }

    /// Everything written to the capture file so far.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// Sends a unique UDP datagram from `ns` to `addr:port` across the captured link and
    /// waits until it is in the file, so everything sent before it has been written too.
    pub fn sync(&self, lab: &Lab, ns: &str, addr: Ipv4Addr, port: u16) {
        let sentinel = format!("isthmus-capture-sync-{}", hex(&random_bytes(8)));
        let ok = wait_for(
            || {
                send_udp(lab, ns, addr, port, sentinel.as_bytes());
                wait_for(
                    || contains(&self.bytes(), sentinel.as_bytes()),
                    Duration::from_millis(500),
                )
            },
            Duration::from_secs(5),
        );
        assert!(
            ok,
            "sync datagram {ns} -> {addr}:{port} never reached the capture file {}",
            self.file.display()
        );
    }

    /// Stops tcpdump with SIGINT (it flushes and exits) and returns the whole pcap file.
    pub fn stop(mut self) -> Vec<u8> {
        let status = self
            .guard
            .stop(Signal::Int, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("tcpdump did not stop: {e:#}"));
        assert!(
            status.success(),
            "tcpdump exited with {status}:\n{}",
            self.guard.stderr()
        );
        std::fs::read(&self.file).unwrap_or_else(|e| panic!("read {}: {e}", self.file.display()))
    }
}

/// One UDP-in-IPv4 datagram of an Ethernet pcap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// The frames (link-layer bytes) of a pcap file with Ethernet link type, as tcpdump writes it
/// for a veth. Only the classic format (not pcapng), either byte order, µs or ns timestamps.
pub fn pcap_frames(file: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        file.len() >= 24,
        "pcap file too short: {} bytes",
        file.len()
    );
    let magic = &file[..4];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file (magic {magic:02x?})"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if little {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let linktype = u32_at(file, 20);
    assert_eq!(
        linktype, 1,
        "pcap link type {linktype}, expected Ethernet (1)"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let caplen = u32_at(file, at + 8) as usize;
        let start = at + 16;
        if start + caplen > file.len() {
            break; // a record cut short by a stop mid-write
        }
        frames.push(file[start..start + caplen].to_vec());
        at = start + caplen;
    }
    frames
}

/// The UDP/IPv4 datagram in Ethernet frame `frame`, if it is one (unfragmented).
pub fn udp_datagram(frame: &[u8]) -> Option<Datagram> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ip[9] != 17 || fragmented || ihl < 20 || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    if udp.len() < 8 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if len < 8 || len > udp.len() {
        return None;
    }
    Some(Datagram {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..len].to_vec(),
    })
}

/// Every UDP/IPv4 datagram of a pcap file.
pub fn pcap_datagrams(file: &[u8]) -> Vec<Datagram> {
    pcap_frames(file)
        .iter()
        .filter_map(|f| udp_datagram(f))
        .collect()
}

/// WireGuard message type of a datagram payload (paper §5.4): 1 initiation (148 bytes),
/// 2 response (92), 3 cookie reply (64), 4 transport data (>= 32). None if it is not shaped
/// like one.
pub fn wg_type(payload: &[u8]) -> Option<u8> {
    if payload.len() < 4 || payload[1..4] != [0, 0, 0] {
        return None;
    }
    match (payload[0], payload.len()) {
        (1, 148) | (2, 92) | (3, 64) => Some(payload[0]),
        (4, n) if n >= 32 => Some(4),
        _ => None,
    }
}

/// The WAN address and port of cluster `i`'s gateway.
pub fn gw_wan(i: usize) -> (Ipv4Addr, u16) {
    (plan::wan_addr(i), plan::LISTEN_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_datagrams_are_read_from_a_pcap() {
        // Global header (µs, little endian, Ethernet) + one record of a UDP datagram
        // 127.0.0.1:55513 -> 127.0.0.1:9 carrying "hello", as tcpdump wrote it.
        let mut file = vec![
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0,
        ];
        let frame: Vec<u8> = [
            &[0u8; 12][..],
            &[0x08, 0x00],
            &[
                0x45, 0, 0, 0x21, 0x99, 0xf6, 0x40, 0, 0x40, 0x11, 0xa2, 0xd3, 127, 0, 0, 1, 127,
                0, 0, 1,
            ],
            &[0xd8, 0xd9, 0, 9, 0, 0x0d, 0xfe, 0x20],
            b"hello",
        ]
        .concat();
        let len = (frame.len() as u32).to_le_bytes();
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&len);
        file.extend_from_slice(&len);
        file.extend_from_slice(&frame);
        let got = pcap_datagrams(&file);
        assert_eq!(
            got,
            vec![Datagram {
                src: Ipv4Addr::LOCALHOST,
                dst: Ipv4Addr::LOCALHOST,
                sport: 55513,
                dport: 9,
                payload: b"hello".to_vec(),
            }]
        );
        assert!(contains(&file, b"hello"));
        assert!(!contains(&file, b"hellO"));
    }

    #[test]
    fn wireguard_message_shapes() {
        assert_eq!(wg_type(&[1; 148]), None, "reserved bytes must be zero");
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(wg_type(&init), Some(1));
        assert_eq!(wg_type(&init[..147]), None);
        let mut data = vec![0u8; 32];
        data[0] = 4;
        assert_eq!(wg_type(&data), Some(4));
        assert_eq!(wg_type(&data[..31]), None);
    }
}
