//! `serve`: a listener thread per TCP socket with a thread per connection, and a thread per
//! UDP socket.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ArgGroup;
use socket2::{Domain, Socket, Type};

use crate::emit;
use crate::udp::UdpServer;
use isthmus_lab::app::report::READY_LINE;

/// Backlog of every TCP listener: the connection-rate benchmark opens many at once.
const BACKLOG: i32 = 1024;
/// Stack of a connection thread; its buffer lives on the heap.
const CONN_STACK: usize = 128 * 1024;
const ECHO_BUF: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("sockets").required(true).multiple(true).args(["tcp", "udp"])))]
pub struct Args {
    /// Name to answer with, the first word of every greeting (e.g. the cluster's name).
    #[arg(long, value_parser = parse_name)]
    pub name: String,
    /// TCP address to listen on (repeatable); 0.0.0.0 for every local address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tcp: Vec<SocketAddr>,
    /// UDP address to answer on (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp: Vec<SocketAddr>,
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) || s.len() > 64 {
        return Err("must be one word of at most 64 characters".to_owned());
    }
    Ok(s.to_owned())
}

pub fn run(args: &Args) -> Result<ExitCode> {
    // Everything is bound before anything runs: a bad address fails the whole server.
    let listeners = args
        .tcp
        .iter()
        .map(|&a| listen(a).with_context(|| format!("failed to listen on TCP {a}")))
        .collect::<Result<Vec<_>>>()?;
    let udp = args
        .udp
        .iter()
        .map(|&a| UdpServer::bind(a).with_context(|| format!("failed to bind UDP {a}")))
        .collect::<Result<Vec<_>>>()?;
    ctrlc::set_handler(|| {
        eprintln!("isthmus-lab-app: stopping on signal");
        // Every log line is written and flushed under stdout's lock, so none is cut short.
        let _out = std::io::stdout().lock();
        std::process::exit(0);
    })
    .context("failed to install the signal handler")?;

    let mut threads = Vec::new();
    for l in listeners {
        let local = l
            .local_addr()
            .context("failed to read a listener's address")?;
        emit(&format!("listening tcp {local}"));
        let name = args.name.clone();
        threads.push(std::thread::spawn(move || accept_loop(&l, &name)));
    }
    for u in udp {
        emit(&format!("listening udp {}", u.local_addr()));
        let name = args.name.clone();
        threads.push(std::thread::spawn(move || u.serve(&name)));
    }
    emit(READY_LINE);
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener, name: &str) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends pass; keep serving the connections that fit.
                eprintln!("isthmus-lab-app: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("isthmus-lab-app: local address of a connection from {peer}: {e}");
                continue;
            }
        };
        emit(&format!("tcp {peer} {local}"));
        let greeting = format!("{name} {local}\n");
        let spawned = std::thread::Builder::new()
            .stack_size(CONN_STACK)
            .spawn(move || {
                if let Err(e) = greet_and_echo(&stream, &greeting) {
                    if !matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) {
                        eprintln!("isthmus-lab-app: connection from {peer}: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("isthmus-lab-app: no thread for the connection from {peer}: {e}");
        }
    }
}

fn greet_and_echo(mut stream: &TcpStream, greeting: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(greeting.as_bytes())?;
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
