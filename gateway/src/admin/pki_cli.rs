//! `tunctl pki …`: make a trust domain's CAs, issue SVIDs bound to fresh WireGuard keys, and
//! inspect or verify them. Works on files only; no daemon is involved.
//!
//! A CA directory holds `ca.pem` (the CA's certificate), `ca.key` (its PKCS#8 key, 0600) and
//! `bundle.pem` (the trust bundle: the root). An issue directory holds `svid.pem` (the chain,
//! leaf first), `svid.key` (0600), `wg.key` (the WireGuard private key, `wg genkey` format,
//! 0600) and `bundle.pem`. Nothing is ever overwritten: a command whose files exist fails and
//! writes nothing.

use super::render::{compact_duration, table, OutputFormat};
use crate::keys::{PrivateKey, PublicKey};
use anyhow::{anyhow, Context as _};
use isthmus_pki::pem_io::{self, NewFile};
use isthmus_pki::{rfc3339, Authority, Bundle, CertInfo, SpiffeId, TrustDomain};
use serde::Serialize;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const BUNDLE: &str = "bundle.pem";
pub const SVID_CHAIN: &str = "svid.pem";
pub const SVID_KEY: &str = "svid.key";
pub const WG_KEY: &str = "wg.key";

#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Create a trust domain's root CA: DIR/ca.pem, DIR/ca.key, DIR/bundle.pem
    Init {
        /// Trust domain name, e.g. isthmus.local
        #[arg(long, value_name = "TD", default_value = "isthmus.local")]
        trust_domain: String,
        /// Directory to create the files in (made if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime: a number with s, m, h or d, e.g. 3650d
        #[arg(long, value_name = "DURATION", default_value = "3650d", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Create a cluster's intermediate CA, signed by the root in --ca
    Intermediate {
        /// The cluster whose identities the intermediate may sign
        #[arg(long)]
        cluster: String,
        /// Directory of the root CA (from `tunctl pki init`)
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to create the intermediate's files in
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime, cut at the root's expiry
        #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Issue a gateway or edge SVID bound to a fresh WireGuard key
    #[command(group = clap::ArgGroup::new("who").required(true).args(["gateway", "edge"]))]
    Issue {
        /// Gateway node name: spiffe://<td>/cluster/<cluster>/gateway/<NODE>
        #[arg(long, value_name = "NODE")]
        gateway: Option<String>,
        /// The gateway's cluster [default: the intermediate's cluster]
        #[arg(long, requires = "gateway")]
        cluster: Option<String>,
        /// Edge node name: spiffe://<td>/edge/<NAME> (only a root signs these)
        #[arg(long, value_name = "NAME")]
        edge: Option<String>,
        /// Directory of the signing CA (root or intermediate)
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to create svid.pem, svid.key, wg.key and bundle.pem in
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime, cut at the CA's expiry
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Show a PEM file's SPIFFE ID, expiry, bound WireGuard key and issuer chain
    Inspect {
        /// A chain (svid.pem), a CA certificate or a bundle
        file: PathBuf,
    },
    /// Verify a chain against a bundle; exits non-zero naming the broken rule
    Verify {
        /// Trust bundle (PEM, one or more roots)
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// The chain to verify (PEM, leaf first)
        chain: PathBuf,
        /// The SPIFFE ID the chain must name
        #[arg(long, value_name = "SPIFFE_ID")]
        id: Option<String>,
        /// A WireGuard private key file whose public key must be the bound one
        #[arg(long, value_name = "FILE", conflicts_with = "wg_public_key")]
        wg_key_file: Option<PathBuf>,
        /// A WireGuard public key (base64) that must be the bound one
        #[arg(long, value_name = "KEY")]
        wg_public_key: Option<String>,
        /// Trust domain of the bundle [default: read from the roots' URI SANs]
        #[arg(long, value_name = "TD")]
        trust_domain: Option<String>,
    },
}

/// Runs one `tunctl pki` command at `now`; returns what to print.
pub fn run(command: PkiCommand, format: OutputFormat, now: SystemTime) -> anyhow::Result<String> {
    match command {
        PkiCommand::Init {
            trust_domain,
            out,
            ttl,
        } => init(&trust_domain, &out, ttl, now),
        PkiCommand::Intermediate {
            cluster,
            ca,
            out,
            ttl,
        } => intermediate(&cluster, &ca, &out, ttl, now),
        PkiCommand::Issue {
            gateway,
            cluster,
            edge,
            ca,
            out,
            ttl,
        } => {
            let who = match (gateway, edge) {
                (Some(node), None) => Who::Gateway { node, cluster },
                (None, Some(name)) => Who::Edge(name),
                _ => unreachable!("clap requires exactly one of --gateway and --edge"),
            };
            issue(who, &ca, &out, ttl, now)
        }
        PkiCommand::Inspect { file } => inspect(&file, format, now),
        PkiCommand::Verify {
            bundle,
            chain,
            id,
            wg_key_file,
            wg_public_key,
            trust_domain,
        } => {
            let key = match (wg_key_file, wg_public_key) {
                (Some(path), _) => Some(KeySource::PrivateFile(path)),
                (None, Some(text)) => Some(KeySource::Public(text)),
                (None, None) => None,
            };
            let request = VerifyRequest {
                bundle,
                chain,
                id,
                key,
                trust_domain,
            };
            verify(&request, format, now)
        }
    }
}

fn init(trust_domain: &str, out: &Path, ttl: Duration, now: SystemTime) -> anyhow::Result<String> {
    let td = TrustDomain::new(trust_domain)
        .with_context(|| format!("invalid --trust-domain {trust_domain:?}"))?;
    let root = Authority::root(&td, now, ttl).context("failed to create the root CA")?;
    write_files(
        out,
        vec![
            NewFile::public(out.join(CA_CERT), root.cert_pem()),
            NewFile::private(out.join(CA_KEY), root.key_pem()),
            NewFile::public(out.join(BUNDLE), root.cert_pem()),
        ],
    )?;
    Ok(format!(
        "created root CA {} in {} ({CA_CERT}, {CA_KEY}, {BUNDLE}), valid until {}\n",
        root.id(),
        out.display(),
        rfc3339(root.not_after())
    ))
}

fn intermediate(
    cluster: &str,
    ca_dir: &Path,
    out: &Path,
    ttl: Duration,
    now: SystemTime,
) -> anyhow::Result<String> {
    let (root, bundle_pem) = load_ca(ca_dir)?;
    let ca = root
        .intermediate(cluster, now, ttl)
        .with_context(|| format!("failed to create an intermediate for cluster {cluster:?}"))?;
    write_files(
        out,
        vec![
            NewFile::public(out.join(CA_CERT), ca.cert_pem()),
            NewFile::private(out.join(CA_KEY), ca.key_pem()),
            NewFile::public(out.join(BUNDLE), bundle_pem),
        ],
    )?;
    Ok(format!(
        "created intermediate CA {} in {} ({CA_CERT}, {CA_KEY}, {BUNDLE}), valid until {}\n",
        ca.id(),
        out.display(),
        rfc3339(ca.not_after())
    ))
}

enum Who {
    Gateway {
        node: String,
        cluster: Option<String>,
    },
    Edge(String),
}

fn issue(
    who: Who,
    ca_dir: &Path,
    out: &Path,
    ttl: Duration,
    now: SystemTime,
) -> anyhow::Result<String> {
    let (ca, bundle_pem) = load_ca(ca_dir)?;
    let td = ca.trust_domain();
    let id = match &who {
        Who::Gateway { node, cluster } => {
            let cluster = match (cluster.as_deref(), ca.cluster()) {
                (Some(cluster), _) | (None, Some(cluster)) => cluster,
                (None, None) => anyhow::bail!(
                    "--cluster is required when {} is a root CA",
                    ca_dir.display()
                ),
            };
            SpiffeId::gateway(&td, cluster, node)
                .with_context(|| format!("invalid --gateway {node:?} or --cluster {cluster:?}"))?
        }
        Who::Edge(name) => {
            SpiffeId::edge(&td, name).with_context(|| format!("invalid --edge {name:?}"))?
        }
    };
    let wg = PrivateKey::generate();
    let svid = ca
        .issue(&id, wg.public_key().as_bytes(), now, ttl)
        .with_context(|| format!("failed to issue an SVID for {id}"))?;
    write_files(
        out,
        vec![
            NewFile::public(out.join(SVID_CHAIN), svid.chain_pem()),
            NewFile::private(out.join(SVID_KEY), svid.key_pem()),
            NewFile::private(out.join(WG_KEY), format!("{}\n", wg.to_base64())),
            NewFile::public(out.join(BUNDLE), bundle_pem),
        ],
    )?;
    Ok(format!(
        "issued {id}, valid until {}, bound to WireGuard key {}\n\
         wrote {SVID_CHAIN}, {SVID_KEY}, {WG_KEY}, {BUNDLE} in {}\n",
        rfc3339(svid.not_after()),
        wg.public_key(),
        out.display()
    ))
}

/// A CA directory's authority and its bundle's text; the two must share a trust domain.
fn load_ca(dir: &Path) -> anyhow::Result<(Authority, String)> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let bundle_path = dir.join(BUNDLE);
    let cert = read(&cert_path)?;
    let key = read(&key_path)?;
    let ca = Authority::from_pem(&cert, &key).with_context(|| {
        format!(
            "{} and {} are not a usable CA",
            cert_path.display(),
            key_path.display()
        )
    })?;
    let bundle_pem = read(&bundle_path)?;
    let bundle = Bundle::from_pem(&bundle_pem)
        .with_context(|| format!("{} is not a trust bundle", bundle_path.display()))?;
    anyhow::ensure!(
        bundle.trust_domain() == &ca.trust_domain(),
        "{} is for trust domain {}, but {} is a CA of {}",
        bundle_path.display(),
        bundle.trust_domain(),
        cert_path.display(),
        ca.trust_domain()
    );
    Ok((ca, bundle_pem))
}

fn read(path: &Path) -> anyhow::Result<String> {
    pem_io::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

/// Makes `dir` (0700, as it holds private keys) and writes every file or none.
fn write_files(dir: &Path, files: Vec<NewFile>) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create directory {}", dir.display()))?;
    pem_io::write_new_files(&files).map_err(|e| match e {
        isthmus_pki::Error::Exists(path) => {
            anyhow!("{} already exists; refusing to overwrite", path.display())
        }
        other => anyhow::Error::new(other).context("failed to write"),
    })
}

#[derive(Debug, Serialize)]
struct CertView {
    spiffe_id: Option<String>,
    uri_sans: Vec<String>,
    subject: String,
    issuer: String,
    serial: String,
    ca: bool,
    self_signed: bool,
    not_before: String,
    not_after: String,
    wireguard_public_key: Option<String>,
}

impl From<&CertInfo> for CertView {
    fn from(info: &CertInfo) -> Self {
        Self {
            spiffe_id: info.spiffe_id.as_ref().map(ToString::to_string),
            uri_sans: info.uri_sans.clone(),
            subject: info.subject.clone(),
            issuer: info.issuer.clone(),
            serial: info.serial.clone(),
            ca: info.is_ca,
            self_signed: info.self_signed,
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
            wireguard_public_key: info
                .wg_public_key
                .map(|k| PublicKey::from_bytes(k).to_base64()),
        }
    }
}

#[derive(Debug, Serialize)]
struct InspectView {
    file: String,
    spiffe_id: Option<String>,
    not_after: String,
    expired: bool,
    wireguard_public_key: Option<String>,
    chain: Vec<CertView>,
}

fn inspect(file: &Path, format: OutputFormat, now: SystemTime) -> anyhow::Result<String> {
    let text = read(file)?;
    let certs = pem_io::certs_from_pem(&text)
        .with_context(|| format!("{} holds no certificates", file.display()))?;
    let infos = isthmus_pki::inspect(&certs)
        .with_context(|| format!("{} holds a malformed certificate", file.display()))?;
    let leaf = &infos[0];
    let view = InspectView {
        file: file.display().to_string(),
        spiffe_id: leaf.spiffe_id.as_ref().map(ToString::to_string),
        not_after: rfc3339(leaf.not_after),
        expired: leaf.not_after < now,
        wireguard_public_key: leaf
            .wg_public_key
            .map(|k| PublicKey::from_bytes(k).to_base64()),
        chain: infos.iter().map(CertView::from).collect(),
    };
    if let Some(text) = dump(&view, format)? {
        return Ok(text);
    }
    let expiry = match leaf.not_after.duration_since(now) {
        Ok(left) => format!("in {}", compact_duration(left.as_secs())),
        Err(past) => format!(
            "EXPIRED {} ago",
            compact_duration(past.duration().as_secs())
        ),
    };
    let none = || "-".to_string();
    let mut out = table(
        &["FIELD", "VALUE"],
        &[
            vec!["FILE".into(), view.file.clone()],
            vec![
                "SPIFFE ID".into(),
                view.spiffe_id.clone().unwrap_or_else(none),
            ],
            vec!["NOT AFTER".into(), format!("{} ({expiry})", view.not_after)],
            vec![
                "WIREGUARD KEY".into(),
                view.wireguard_public_key.clone().unwrap_or_else(none),
            ],
        ],
    );
    // The header row of the key/value table is noise; keep the aligned rows.
    out = out.lines().skip(1).map(|l| format!("{l}\n")).collect();
    out.push('\n');
    let rows: Vec<Vec<String>> = view
        .chain
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                i.to_string(),
                c.spiffe_id.clone().unwrap_or_else(none),
                if c.ca { "yes" } else { "no" }.into(),
                c.not_after.clone(),
                c.subject.clone(),
                c.issuer.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["#", "SPIFFE ID", "CA", "NOT AFTER", "SUBJECT", "ISSUER"],
        &rows,
    ));
    Ok(out)
}

enum KeySource {
    PrivateFile(PathBuf),
    Public(String),
}

struct VerifyRequest {
    bundle: PathBuf,
    chain: PathBuf,
    id: Option<String>,
    key: Option<KeySource>,
    trust_domain: Option<String>,
}

#[derive(Debug, Serialize)]
struct VerifiedView {
    ok: bool,
    spiffe_id: String,
    wireguard_public_key: String,
    not_after: String,
    intermediate: Option<String>,
}

fn verify(req: &VerifyRequest, format: OutputFormat, now: SystemTime) -> anyhow::Result<String> {
    let roots = pem_io::certs_from_pem(&read(&req.bundle)?)
        .with_context(|| format!("{} holds no certificates", req.bundle.display()))?;
    let bundle = match &req.trust_domain {
        Some(td) => {
            let td =
                TrustDomain::new(td).with_context(|| format!("invalid --trust-domain {td:?}"))?;
            Bundle::new(td, roots)
        }
        None => Bundle::from_roots(roots),
    }
    .with_context(|| format!("{} is not a trust bundle", req.bundle.display()))?;
    let chain = pem_io::certs_from_pem(&read(&req.chain)?)
        .with_context(|| format!("{} holds no certificates", req.chain.display()))?;
    let expected = req
        .id
        .as_deref()
        .map(|id| SpiffeId::new(id).with_context(|| format!("invalid --id {id:?}")))
        .transpose()?;
    let wg_key = match &req.key {
        None => None,
        Some(KeySource::PrivateFile(path)) => {
            let text = read(path)?;
            let key = PrivateKey::try_from_base64(text.trim()).with_context(|| {
                format!(
                    "{} is not a WireGuard private key (`wg genkey` format)",
                    path.display()
                )
            })?;
            Some(key.public_key())
        }
        Some(KeySource::Public(text)) => Some(
            PublicKey::try_from_base64(text)
                .with_context(|| format!("invalid --wg-public-key {text:?}"))?,
        ),
    };
    let verified = isthmus_pki::verify(
        &chain,
        &bundle,
        now,
        expected.as_ref(),
        wg_key.as_ref().map(PublicKey::as_bytes),
    )
    .map_err(|e| {
        anyhow!(
            "{} refused against {}: rule {}: {e}",
            req.chain.display(),
            req.bundle.display(),
            e.rule()
        )
    })?;
    let view = VerifiedView {
        ok: true,
        spiffe_id: verified.id().to_string(),
        wireguard_public_key: PublicKey::from_bytes(*verified.wg_public_key()).to_base64(),
        not_after: rfc3339(verified.not_after()),
        intermediate: verified.intermediate_scope().map(ToString::to_string),
    };
    if let Some(text) = dump(&view, format)? {
        return Ok(text);
    }
    Ok(format!(
        "ok {} (WireGuard key {}, valid until {})\n",
        view.spiffe_id, view.wireguard_public_key, view.not_after
    ))
}

fn dump<T: Serialize>(value: &T, format: OutputFormat) -> anyhow::Result<Option<String>> {
    Ok(match format {
        OutputFormat::Table | OutputFormat::Wide => None,
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value).context("failed to encode JSON")?;
            text.push('\n');
            Some(text)
        }
        OutputFormat::Yaml => {
            Some(serde_yaml_ng::to_string(value).context("failed to encode YAML")?)
        }
    })
}

/// `30s`, `90m`, `24h`, `3650d`, or sums of them such as `1h30m`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 90m, 24h, 30d or 1h30m)");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("3650d"), Ok(Duration::from_secs(3650 * 86_400)));
        for bad in ["", "24", "h", "0s", "1y", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }
}
