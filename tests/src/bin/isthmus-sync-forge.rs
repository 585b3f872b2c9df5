//! Test tool: speaks (or mangles) the catalog sync protocol from a chosen local address, to
//! check what a gateway refuses. Run inside a gateway's namespace so the connection leaves from
//! that gateway's mesh address through its tunnel.
//!
//! `isthmus-sync-forge --from ADDR --to ADDR:PORT snapshot --origin CLUSTER --service NS/NAME --endpoint IP`
//! sends a Snapshot claiming CLUSTER's records; `garbage` sends bytes that are no frame.
//! Prints `closed` when the gateway closed the connection within 5 s, else `open`.

#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use isthmus_catalog::{
    encode, ClusterName, Endpoint, OriginState, ServiceExport, ServiceName, SyncMessage,
};

fn arg(args: &[String], name: &str) -> Result<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("missing {name}"))?;
    args.get(i + 1)
        .cloned()
        .with_context(|| format!("{name} needs a value"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let from: IpAddr = arg(&args, "--from")?.parse().context("--from")?;
    let to: SocketAddr = arg(&args, "--to")?.parse().context("--to")?;
    let bytes = if args.iter().any(|a| a == "snapshot") {
        let origin = ClusterName::new(arg(&args, "--origin")?)?;
        let service: ServiceName = arg(&args, "--service")?.parse()?;
        let mut export = ServiceExport::new(service.clone());
        export.endpoints.push(Endpoint {
            address: arg(&args, "--endpoint")?.parse().context("--endpoint")?,
            port: 7000,
            ready: true,
            zone: None,
        });
        // A generation far in the future: newer than anything the origin itself published.
        let mut state = OriginState::new(origin, u64::MAX / 2);
        state.version = 1;
        state.services.insert(service, export);
        encode(&SyncMessage::Snapshot(state))?
    } else if args.iter().any(|a| a == "garbage") {
        // A plausible length, an unknown protocol version, then junk.
        let mut b = vec![0, 0, 0, 40, 0xff, 0x7f];
        b.extend((0u8..38).map(|i| i.wrapping_mul(37)));
        b
    } else {
        bail!("say snapshot or garbage");
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(3))?;
    let mut stream: TcpStream = socket.into();
    stream.write_all(&bytes)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            // The gateway may answer (a Hello) before it closes; keep reading until it does.
            Ok(0) => {
                println!("closed");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                println!("closed");
                return Ok(());
            }
            Err(_) => {
                println!("open");
                return Ok(());
            }
        }
    }
}
