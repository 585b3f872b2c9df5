//! Loading the programs with aya, attaching them, and reading and writing their maps.
//!
//! Nothing is pinned: every program, link and map lives as long as the [`Datapath`] value (its
//! file descriptors), so dropping it, or the process dying, leaves nothing behind in the kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::error::Error;
use crate::layout::{
    self, BackendValue, FlowKey, FlowValue, ServiceKey, ServiceValue, SlotKey, StatKey, StatValue,
    BACKEND_KEY_SIZE, BACKEND_VALUE_SIZE, CONFIG_SIZE, FLOW_KEY_SIZE, FLOW_VALUE_SIZE,
    RNAT_VALUE_SIZE, RR_VALUE_SIZE, SLOT_KEY_SIZE, SLOT_VALUE_SIZE, STAT_KEY_SIZE, STAT_VALUE_SIZE,
    SVC_KEY_SIZE, SVC_VALUE_SIZE, VIP_KEY_SIZE, VIP_VALUE_SIZE,
};
use crate::OBJECT;

/// Map names, as in `bpf/isthmus.bpf.c`.
pub mod maps {
    pub const SERVICES: &str = "ist_services";
    pub const VIPS: &str = "ist_vips";
    pub const SLOTS: &str = "ist_slots";
    pub const BACKENDS: &str = "ist_backends";
    pub const FLOWS: &str = "ist_flows";
    pub const RNAT: &str = "ist_rnat";
    pub const SOCK_REV: &str = "ist_sock_rev";
    pub const RR: &str = "ist_rr";
    pub const STATS: &str = "ist_stats";
    pub const CONFIG: &str = "ist_config";
}

const FROM_POD: &str = "ist_from_pod";
const TO_POD: &str = "ist_to_pod";
/// The socket programs and where each attaches.
const SOCKET_PROGRAMS: [&str; 6] = [
    "ist_connect4",
    "ist_connect6",
    "ist_sendmsg4",
    "ist_sendmsg6",
    "ist_recvmsg4",
    "ist_recvmsg6",
];

/// How many entries each map holds. A catalog that needs more is refused service by service
/// by the agent, never written half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Service ports (VIP, port, protocol) and VIPs; also the highest service id.
    pub services: u32,
    /// Backends over all services.
    pub backends: u32,
    /// Slots over all slot tables (each service's backends expanded by weight), including the
    /// table being replaced during an update.
    pub slots: u32,
    /// Flows held by pods' connections to VIPs (least recently used ones are evicted).
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            services: 4096,
            backends: 65_536,
            slots: 262_144,
            flows: 262_144,
        }
    }
}

/// Per-service counters: `(service id, reason)` summed over CPUs. Service 0 counts what no
/// service could be named for.
pub type Stats = BTreeMap<StatKey, StatValue>;

struct Veth {
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// The loaded programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
    capacity: Capacity,
    veths: BTreeMap<String, Veth>,
    sockets: Option<(PathBuf, Vec<(&'static str, CgroupSockAddrLinkId)>)>,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| {
        if let MapError::SyscallError(e) = &source {
            if e.io_error.raw_os_error() == Some(libc::E2BIG) {
                return Error::MapFull { map };
            }
        }
        Error::Map { map, op, source }
    }
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl Datapath {
    /// Loads the object with maps sized by `capacity` and loads (verifies) every program.
    /// Attaches nothing.
    pub fn load(capacity: Capacity) -> Result<Self, Error> {
        let services = capacity.services.max(1);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::SERVICES, services)
            .map_max_entries(maps::VIPS, services)
            .map_max_entries(maps::BACKENDS, capacity.backends.max(1))
            .map_max_entries(maps::SLOTS, capacity.slots.max(1))
            .map_max_entries(maps::FLOWS, capacity.flows.max(1))
            .map_max_entries(maps::RNAT, capacity.flows.max(1))
            .map_max_entries(maps::SOCK_REV, capacity.flows.max(1))
            // Service ids are 1..=services; 0 is "no service".
            .map_max_entries(maps::RR, services.saturating_add(1))
            .map_max_entries(
                maps::STATS,
                services.saturating_add(1).saturating_mul(layout::REASONS),
            );
        let mut ebpf = loader.load(OBJECT).map_err(Error::Load)?;
        for name in [FROM_POD, TO_POD] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| Error::ProgramLoad { name, source })?;
        }
        for name in SOCKET_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| Error::ProgramLoad { name, source })?;
        }
        Ok(Datapath {
            ebpf,
            capacity,
            veths: BTreeMap::new(),
            sockets: None,
        })
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Attaches the pod programs to the host side of a pod's veth (TCX ingress and egress).
    /// Attaching an interface twice is a no-op.
    pub fn attach_veth(&mut self, ifname: &str) -> Result<(), Error> {
        if self.veths.contains_key(ifname) {
            return Ok(());
        }
        let attach = |ebpf: &mut Ebpf, name: &'static str, at: TcAttachType| {
            let prog: &mut SchedClassifier = program(ebpf, name)?;
            prog.attach(ifname, at).map_err(|source| Error::Attach {
                program: name,
                target: ifname.to_owned(),
                source,
            })
        };
        let ingress = attach(&mut self.ebpf, FROM_POD, TcAttachType::Ingress)?;
        let egress = match attach(&mut self.ebpf, TO_POD, TcAttachType::Egress) {
            Ok(id) => id,
            Err(e) => {
                // Never leave half a pair: a pod whose replies are not translated back breaks.
                let prog: &mut SchedClassifier = program(&mut self.ebpf, FROM_POD)?;
                let _ = prog.detach(ingress);
                return Err(e);
            }
        };
        self.veths
            .insert(ifname.to_owned(), Veth { ingress, egress });
        Ok(())
    }

    /// Detaches both programs from `ifname`. An interface that is gone (its links died with
    /// it) detaches without error.
    pub fn detach_veth(&mut self, ifname: &str) -> Result<(), Error> {
        let Some(veth) = self.veths.remove(ifname) else {
            return Ok(());
        };
        let mut first_error = None;
        for (name, id) in [(FROM_POD, veth.ingress), (TO_POD, veth.egress)] {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            if let Err(source) = prog.detach(id) {
                first_error.get_or_insert(Error::Detach {
                    program: name,
                    target: ifname.to_owned(),
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Interfaces the pod programs are attached to, by name.
    pub fn veths(&self) -> impl Iterator<Item = &str> {
        self.veths.keys().map(String::as_str)
    }

    /// Attaches the socket programs to the cgroup (v2) at `cgroup`, acting only for sockets
    /// of the calling thread's network namespace. Other programs attached there keep running
    /// (multi-attach).
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<(), Error> {
        if self.sockets.is_some() {
            return Ok(());
        }
        let cookie = crate::sys::netns_cookie().map_err(Error::NetnsCookie)?;
        {
            let mut config: Array<&mut MapData, [u8; CONFIG_SIZE]> =
                Array::try_from(map_mut(&mut self.ebpf, maps::CONFIG)?)
                    .map_err(map_err(maps::CONFIG, "open"))?;
            config
                .set(0, layout::config_value(cookie), 0)
                .map_err(map_err(maps::CONFIG, "update"))?;
        }
        let dir = std::fs::File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let mut links = Vec::new();
        for name in SOCKET_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            // A bpf_link attach takes no flags and always coexists with other programs (the
            // kernel attaches links as BPF_F_ALLOW_MULTI).
            match prog.attach(&dir, CgroupAttachMode::Single) {
                Ok(id) => links.push((name, id)),
                Err(source) => {
                    for (n, id) in links {
                        if let Ok(p) = program::<CgroupSockAddr>(&mut self.ebpf, n) {
                            let _ = p.detach(id);
                        }
                    }
                    return Err(Error::Attach {
                        program: name,
                        target: cgroup.display().to_string(),
                        source,
                    });
                }
            }
        }
        self.sockets = Some((cgroup.to_owned(), links));
        Ok(())
    }

    /// The cgroup the socket programs are attached to.
    pub fn sockets(&self) -> Option<&Path> {
        self.sockets.as_ref().map(|(p, _)| p.as_path())
    }

    /// Detaches everything (programs stay loaded until the value drops).
    pub fn detach_all(&mut self) -> Result<(), Error> {
        let mut first_error = None;
        let names: Vec<String> = self.veths.keys().cloned().collect();
        for ifname in names {
            if let Err(e) = self.detach_veth(&ifname) {
                first_error.get_or_insert(e);
            }
        }
        if let Some((path, links)) = self.sockets.take() {
            for (name, id) in links {
                let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
                if let Err(source) = prog.detach(id) {
                    first_error.get_or_insert(Error::Detach {
                        program: name,
                        target: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn hash<const K: usize, const V: usize>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, [u8; K], [u8; V]>, Error> {
        HashMap::try_from(map_mut(&mut self.ebpf, name)?).map_err(map_err(name, "open"))
    }

    fn insert<const K: usize, const V: usize>(
        &mut self,
        name: &'static str,
        key: [u8; K],
        value: [u8; V],
    ) -> Result<(), Error> {
        self.hash::<K, V>(name)?
            .insert(key, value, 0)
            .map_err(map_err(name, "update"))
    }

    /// Deletes `key`; a key that is not there is not an error.
    fn remove<const K: usize, const V: usize>(
        &mut self,
        name: &'static str,
        key: [u8; K],
    ) -> Result<(), Error> {
        match self.hash::<K, V>(name)?.remove(&key) {
            Err(e) if !is_not_found(&e) => Err(map_err(name, "delete")(e)),
            _ => Ok(()),
        }
    }

    pub fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Error> {
        self.insert(maps::SERVICES, key.encode(), value.encode())
    }

    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        self.remove::<SVC_KEY_SIZE, SVC_VALUE_SIZE>(maps::SERVICES, key.encode())
    }

    pub fn put_vip(&mut self, vip: IpAddr, service_id: u32) -> Result<(), Error> {
        self.insert(
            maps::VIPS,
            layout::vip_key(vip),
            layout::vip_value(service_id),
        )
    }

    pub fn delete_vip(&mut self, vip: IpAddr) -> Result<(), Error> {
        self.remove::<VIP_KEY_SIZE, VIP_VALUE_SIZE>(maps::VIPS, layout::vip_key(vip))
    }

    pub fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), Error> {
        self.insert(maps::SLOTS, key.encode(), layout::slot_value(backend_id))
    }

    pub fn delete_slot(&mut self, key: &SlotKey) -> Result<(), Error> {
        self.remove::<SLOT_KEY_SIZE, SLOT_VALUE_SIZE>(maps::SLOTS, key.encode())
    }

    pub fn put_backend(&mut self, backend_id: u32, value: &BackendValue) -> Result<(), Error> {
        self.insert(
            maps::BACKENDS,
            layout::backend_key(backend_id),
            value.encode(),
        )
    }

    pub fn delete_backend(&mut self, backend_id: u32) -> Result<(), Error> {
        self.remove::<BACKEND_KEY_SIZE, BACKEND_VALUE_SIZE>(
            maps::BACKENDS,
            layout::backend_key(backend_id),
        )
    }

    /// Restarts a service's round-robin position (a service id handed to a new service).
    pub fn reset_rr(&mut self, service_id: u32) -> Result<(), Error> {
        let mut rr: Array<&mut MapData, [u8; RR_VALUE_SIZE]> =
            Array::try_from(map_mut(&mut self.ebpf, maps::RR)?)
                .map_err(map_err(maps::RR, "open"))?;
        rr.set(service_id, layout::rr_value(0), 0)
            .map_err(map_err(maps::RR, "update"))
    }

    /// Every service's counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let map = map_ref(&self.ebpf, maps::STATS)?;
        let stats: PerCpuHashMap<&MapData, [u8; STAT_KEY_SIZE], [u8; STAT_VALUE_SIZE]> =
            PerCpuHashMap::try_from(map).map_err(map_err(maps::STATS, "open"))?;
        let mut out = Stats::new();
        for item in stats.iter() {
            let (key, per_cpu) = item.map_err(map_err(maps::STATS, "read"))?;
            let sum = per_cpu.iter().fold(StatValue::default(), |acc, v| {
                let v = StatValue::decode(v);
                StatValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                }
            });
            out.insert(StatKey::decode(&key), sum);
        }
        Ok(out)
    }

    /// Drops a service's counters (its id is about to be handed to another service).
    pub fn clear_stats(&mut self, service_id: u32) -> Result<(), Error> {
        let map = map_mut(&mut self.ebpf, maps::STATS)?;
        let mut stats: PerCpuHashMap<&mut MapData, [u8; STAT_KEY_SIZE], [u8; STAT_VALUE_SIZE]> =
            PerCpuHashMap::try_from(map).map_err(map_err(maps::STATS, "open"))?;
        for reason in 0..layout::REASONS {
            let key = StatKey { service_id, reason }.encode();
            match stats.remove(&key) {
                Err(e) if !is_not_found(&e) => return Err(map_err(maps::STATS, "delete")(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Flows held now (walks the map: for status, not for a hot path).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        let map = map_ref(&self.ebpf, maps::FLOWS)?;
        let flows: HashMap<&MapData, [u8; FLOW_KEY_SIZE], [u8; FLOW_VALUE_SIZE]> =
            HashMap::try_from(map).map_err(map_err(maps::FLOWS, "open"))?;
        let mut out = Vec::new();
        for item in flows.iter() {
            let (k, v) = item.map_err(map_err(maps::FLOWS, "read"))?;
            if let Some(k) = FlowKey::decode(&k) {
                out.push((k, FlowValue::decode(&v)));
            }
        }
        Ok(out)
    }

    /// Entries of a map by name (for map fill in status); walks the map.
    pub fn count_entries(&self, name: &'static str) -> Result<usize, Error> {
        let map = map_ref(&self.ebpf, name)?;
        // Every map but the arrays is a hash; the key size is the map's own.
        let n = match name {
            maps::SERVICES => HashMap::<_, [u8; SVC_KEY_SIZE], [u8; SVC_VALUE_SIZE]>::try_from(map)
                .map(|m| m.keys().count()),
            maps::VIPS => HashMap::<_, [u8; VIP_KEY_SIZE], [u8; VIP_VALUE_SIZE]>::try_from(map)
                .map(|m| m.keys().count()),
            maps::SLOTS => HashMap::<_, [u8; SLOT_KEY_SIZE], [u8; SLOT_VALUE_SIZE]>::try_from(map)
                .map(|m| m.keys().count()),
            maps::BACKENDS => {
                HashMap::<_, [u8; BACKEND_KEY_SIZE], [u8; BACKEND_VALUE_SIZE]>::try_from(map)
                    .map(|m| m.keys().count())
            }
            maps::FLOWS => HashMap::<_, [u8; FLOW_KEY_SIZE], [u8; FLOW_VALUE_SIZE]>::try_from(map)
                .map(|m| m.keys().count()),
            maps::RNAT => HashMap::<_, [u8; FLOW_KEY_SIZE], [u8; RNAT_VALUE_SIZE]>::try_from(map)
                .map(|m| m.keys().count()),
            _ => {
                return Err(Error::Missing {
                    kind: "countable map",
                    name,
                })
            }
        };
        n.map_err(map_err(name, "open"))
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(Error::Missing {
        kind: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|source| Error::ProgramLoad { name, source })
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, Error> {
    ebpf.map_mut(name)
        .ok_or(Error::Missing { kind: "map", name })
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, Error> {
    ebpf.map(name).ok_or(Error::Missing { kind: "map", name })
}
