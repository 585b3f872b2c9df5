//! Command lines of `isthmus-lab-app`, built from typed values so a test cannot misspell a flag.

use std::net::SocketAddr;
use std::time::Duration;

/// `serve --name NAME [--tcp ADDR:PORT]… [--udp ADDR:PORT]…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    pub name: String,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
}

impl Serve {
    /// A server answering as `name` on no socket yet.
    pub fn new(name: &str) -> Serve {
        Serve {
            name: name.to_owned(),
            tcp: Vec::new(),
            udp: Vec::new(),
        }
    }

    pub fn tcp(mut self, addr: impl Into<SocketAddr>) -> Serve {
        self.tcp.push(addr.into());
        self
    }

    pub fn udp(mut self, addr: impl Into<SocketAddr>) -> Serve {
        self.udp.push(addr.into());
        self
    }

    /// TCP and UDP on the same address and port.
    pub fn both(self, addr: impl Into<SocketAddr>) -> Serve {
        let addr = addr.into();
        self.tcp(addr).udp(addr)
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["serve".to_owned(), "--name".to_owned(), self.name.clone()];
        for a in &self.tcp {
            args.extend(["--tcp".to_owned(), a.to_string()]);
        }
        for a in &self.udp {
            args.extend(["--udp".to_owned(), a.to_string()]);
        }
        args
    }
}

/// How many attempts a probe makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    Count(u64),
    /// Attempts every interval until this much time has passed.
    For(Duration),
}

/// `probe --connect ADDR:PORT [--udp] (--count N | --duration-ms D) [--interval-ms M]
/// [--timeout-ms T]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub target: SocketAddr,
    pub udp: bool,
    pub attempts: Attempts,
    /// Zero: back to back, each attempt after the previous one ended.
    pub interval: Duration,
    pub timeout: Duration,
}

impl Probe {
    /// One TCP attempt with the app's defaults.
    pub fn tcp(target: impl Into<SocketAddr>) -> Probe {
        Probe {
            target: target.into(),
            udp: false,
            attempts: Attempts::Count(1),
            interval: Duration::ZERO,
            timeout: Duration::from_millis(1000),
        }
    }

    /// One UDP request/response with the app's defaults.
    pub fn udp(target: impl Into<SocketAddr>) -> Probe {
        Probe {
            udp: true,
            ..Probe::tcp(target)
        }
    }

    pub fn count(mut self, n: u64) -> Probe {
        self.attempts = Attempts::Count(n);
        self
    }

    pub fn duration(mut self, d: Duration) -> Probe {
        self.attempts = Attempts::For(d);
        self
    }

    pub fn interval(mut self, d: Duration) -> Probe {
        self.interval = d;
        self
    }

    pub fn timeout(mut self, d: Duration) -> Probe {
        self.timeout = d;
        self
    }

    /// How long the probe can take at most, for a caller's own deadline.
    pub fn max_runtime(&self) -> Duration {
        let schedule = match self.attempts {
            Attempts::For(d) => d,
            Attempts::Count(n) if self.interval.is_zero() => {
                self.timeout * u32::try_from(n).unwrap_or(u32::MAX)
            }
            Attempts::Count(n) => self.interval * u32::try_from(n).unwrap_or(u32::MAX),
        };
        schedule + self.timeout
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "probe".to_owned(),
            "--connect".to_owned(),
            self.target.to_string(),
        ];
        if self.udp {
            args.push("--udp".to_owned());
        }
        match self.attempts {
            Attempts::Count(n) => args.extend(["--count".to_owned(), n.to_string()]),
            Attempts::For(d) => args.extend(["--duration-ms".to_owned(), ms(d)]),
        }
        args.extend(["--interval-ms".to_owned(), ms(self.interval)]);
        args.extend(["--timeout-ms".to_owned(), ms(self.timeout)]);
        args
    }
}

/// `transfer --connect ADDR:PORT --bytes N`.
pub fn transfer_args(target: SocketAddr, bytes: u64) -> Vec<String> {
    vec![
        "transfer".to_owned(),
        "--connect".to_owned(),
        target.to_string(),
        "--bytes".to_owned(),
        bytes.to_string(),
    ]
}

/// `rate --connect ADDR:PORT --seconds S --concurrency C`.
pub fn rate_args(target: SocketAddr, seconds: f64, concurrency: u32) -> Vec<String> {
    vec![
        "rate".to_owned(),
        "--connect".to_owned(),
        target.to_string(),
        "--seconds".to_owned(),
        seconds.to_string(),
        "--concurrency".to_owned(),
        concurrency.to_string(),
    ]
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn command_lines_are_built_from_the_spec() {
        let a: SocketAddr = (Ipv4Addr::new(10, 2, 1, 3), 7000).into();
        assert_eq!(
            Serve::new("c2").both(a).tcp(([0, 0, 0, 0], 7001)).args(),
            [
                "serve",
                "--name",
                "c2",
                "--tcp",
                "10.2.1.3:7000",
                "--tcp",
                "0.0.0.0:7001",
                "--udp",
                "10.2.1.3:7000"
            ]
        );
        assert_eq!(
            Probe::udp(a)
                .count(5)
                .interval(Duration::from_millis(50))
                .args(),
            [
                "probe",
                "--connect",
                "10.2.1.3:7000",
                "--udp",
                "--count",
                "5",
                "--interval-ms",
                "50",
                "--timeout-ms",
                "1000"
            ]
        );
        assert_eq!(
            Probe::tcp(a).duration(Duration::from_secs(2)).args(),
            [
                "probe",
                "--connect",
                "10.2.1.3:7000",
                "--duration-ms",
                "2000",
                "--interval-ms",
                "0",
                "--timeout-ms",
                "1000"
            ]
        );
        assert_eq!(
            transfer_args(a, 3),
            ["transfer", "--connect", "10.2.1.3:7000", "--bytes", "3"]
        );
        assert_eq!(
            rate_args(a, 1.5, 4),
            [
                "rate",
                "--connect",
                "10.2.1.3:7000",
                "--seconds",
                "1.5",
                "--concurrency",
                "4"
            ]
        );
    }

    #[test]
    fn max_runtime_bounds_every_schedule() {
        let a: SocketAddr = ([10, 2, 1, 3], 7000).into();
        let p = Probe::tcp(a).count(10);
        assert_eq!(p.max_runtime(), Duration::from_secs(11));
        let p = p.interval(Duration::from_millis(50));
        assert_eq!(p.max_runtime(), Duration::from_millis(1500));
        let p = p.duration(Duration::from_secs(3));
        assert_eq!(p.max_runtime(), Duration::from_secs(4));
    }
}
