//! The reconcile: `(desired, observed) -> Vec<Op>`, pure.
//!
//! [`MapState`] is what the maps hold (plus the agent's own bookkeeping: which name a service
//! id stands for, and the id counters). [`plan`] walks the desired services and simulates each
//! op on a copy of the state as it emits it, so every later decision sees the earlier ones.
//!
//! Order, per service, so a packet never finds a service pointing at a missing or half-made
//! backend set: new backends, new slot tables, the service entries that name them (each one
//! map update), VIPs, then removals (entries, old tables, backends no table names). Services
//! that leave go first, so their room is free for newcomers. A service whose backends change
//! from one non-empty set to another never passes through an empty one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use isthmus_ebpf::layout::{BackendValue, ServiceKey, ServiceValue};

use crate::catalog::ServiceName;
use crate::desired::{BackendAddr, Desired, DesiredService, Family};

/// One change to the maps (or to the agent's bookkeeping of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `service_id` now stands for `name`: its counters and round-robin position start over.
    Claim {
        service_id: u32,
        name: ServiceName,
    },
    /// `service_id` is free again.
    Release {
        service_id: u32,
    },
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// Writes a whole slot table (all or nothing).
    PutSlots {
        selection: u32,
        backends: Vec<u32>,
    },
    PutService {
        key: ServiceKey,
        value: ServiceValue,
    },
    PutVip {
        vip: IpAddr,
        service_id: u32,
    },
    DeleteService {
        key: ServiceKey,
    },
    DeleteVip {
        vip: IpAddr,
    },
    DeleteSlots {
        selection: u32,
        count: u32,
    },
    DeleteBackend {
        id: u32,
    },
}

/// The maps' content as the agent knows it, and its bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub vips: BTreeMap<IpAddr, u32>,
    /// Slot tables by selection id: backend ids in slot order.
    pub slots: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Service id -> the service it stands for.
    pub names: BTreeMap<u32, ServiceName>,
    /// Next selection and backend id: never reused, so a flow's stale id never names a
    /// stranger. 0 is never handed out.
    pub next_selection: u32,
    pub next_backend: u32,
}

impl MapState {
    /// Applies `op` as the maps would.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Claim { service_id, name } => {
                self.names.insert(*service_id, name.clone());
            }
            Op::Release { service_id } => {
                self.names.remove(service_id);
            }
            Op::PutBackend { id, value } => {
                self.backends.insert(*id, *value);
                self.next_backend = self.next_backend.max(id.saturating_add(1));
            }
            Op::PutSlots {
                selection,
                backends,
            } => {
                self.slots.insert(*selection, backends.clone());
                self.next_selection = self.next_selection.max(selection.saturating_add(1));
            }
            Op::PutService { key, value } => {
                self.services.insert(*key, *value);
            }
            Op::PutVip { vip, service_id } => {
                self.vips.insert(*vip, *service_id);
            }
            Op::DeleteService { key } => {
                self.services.remove(key);
            }
            Op::DeleteVip { vip } => {
                self.vips.remove(vip);
            }
            Op::DeleteSlots { selection, .. } => {
                self.slots.remove(selection);
            }
            Op::DeleteBackend { id } => {
                self.backends.remove(id);
            }
        }
    }

    pub fn id_of(&self, name: &ServiceName) -> Option<u32> {
        self.names
            .iter()
            .find_map(|(id, n)| (n == name).then_some(*id))
    }

    /// Whether `name` is programmed now.
    pub fn has(&self, name: &ServiceName) -> bool {
        self.names.values().any(|n| n == name)
    }

    /// The backends that belong to service `id`, by address.
    pub fn backends_of(&self, id: u32) -> BTreeMap<BackendAddr, u32> {
        self.backends
            .iter()
            .filter(|(_, v)| v.service_id == id)
            .map(|(bid, v)| {
                (
                    BackendAddr {
                        addr: v.addr,
                        port: v.port,
                    },
                    *bid,
                )
            })
            .collect()
    }

    /// The current selection of service `id` for VIPs of `family`: `(selection, count)` from
    /// any of its entries (they agree).
    fn selection_of(&self, id: u32, family: Family) -> Option<(u32, u32)> {
        self.services
            .iter()
            .find(|(k, v)| v.service_id == id && Family::of(k.vip) == family)
            .map(|(_, v)| (v.selection, v.count))
    }

    /// The slot tables some entry names.
    pub fn referenced_selections(&self) -> BTreeSet<u32> {
        self.services
            .values()
            .filter(|v| v.count > 0)
            .map(|v| v.selection)
            .collect()
    }

    fn next_selection_id(&self) -> u32 {
        self.next_selection.max(1)
    }

    fn next_backend_id(&self) -> u32 {
        self.next_backend.max(1)
    }
}

/// The ops that take `state` to `desired`, in a safe order.
pub fn plan(desired: &Desired, state: &MapState, max_service_id: u32) -> Vec<Op> {
    let mut sim = state.clone();
    let mut ops = Vec::new();
    let mut emit = |sim: &mut MapState, op: Op| {
        sim.apply(&op);
        ops.push(op);
    };

    // What an interrupted run left that nothing names: a table written before its entries
    // were, backends of a service id no longer claimed.
    for op in orphans(&sim) {
        emit(&mut sim, op);
    }

    // Services that leave, first: their room goes to newcomers.
    let leaving: Vec<(u32, ServiceName)> = sim
        .names
        .iter()
        .filter(|(_, n)| !desired.services.contains_key(n))
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    for (id, _) in leaving {
        for op in removal(&sim, id) {
            emit(&mut sim, op);
        }
    }

    for service in desired.services.values() {
        let id = match sim.id_of(&service.name) {
            Some(id) => id,
            None => {
                let Some(id) = (1..=max_service_id).find(|i| !sim.names.contains_key(i)) else {
                    // Desired never admits more services than ids; nothing to do if it did.
                    continue;
                };
                emit(
                    &mut sim,
                    Op::Claim {
                        service_id: id,
                        name: service.name.clone(),
                    },
                );
                id
            }
        };
        for op in update(&sim, id, service) {
            emit(&mut sim, op);
        }
    }
    // A VIP that moved to another service took its entries along; the table the old owner
    // named through them is now named by nothing.
    for op in orphans(&sim) {
        emit(&mut sim, op);
    }
    ops
}

/// Deletes slot tables no entry names and backends of unclaimed service ids.
fn orphans(state: &MapState) -> Vec<Op> {
    let referenced = state.referenced_selections();
    state
        .slots
        .iter()
        .filter(|(sel, _)| !referenced.contains(sel))
        .map(|(sel, slots)| Op::DeleteSlots {
            selection: *sel,
            count: slots.len() as u32,
        })
        .chain(
            state
                .backends
                .iter()
                .filter(|(_, b)| !state.names.contains_key(&b.service_id))
                .map(|(id, _)| Op::DeleteBackend { id: *id }),
        )
        .collect()
}

/// Everything service `id` holds, removed: entries first (traffic stops being translated),
/// then its tables and backends.
fn removal(state: &MapState, id: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut selections = BTreeSet::new();
    for (key, value) in &state.services {
        if value.service_id == id {
            ops.push(Op::DeleteService { key: *key });
            if value.count > 0 {
                selections.insert(value.selection);
            }
        }
    }
    for (vip, sid) in &state.vips {
        if *sid == id {
            ops.push(Op::DeleteVip { vip: *vip });
        }
    }
    for selection in selections {
        if let Some(slots) = state.slots.get(&selection) {
            ops.push(Op::DeleteSlots {
                selection,
                count: slots.len() as u32,
            });
        }
    }
    for (bid, _) in state.backends.iter().filter(|(_, v)| v.service_id == id) {
        ops.push(Op::DeleteBackend { id: *bid });
    }
    ops.push(Op::Release { service_id: id });
    ops
}

fn update(state: &MapState, id: u32, service: &DesiredService) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut backends = state.backends_of(id);
    let mut next_backend = state.next_backend_id();
    let mut next_selection = state.next_selection_id();

    // 1. Backends it lacks.
    for addr in service.backends.keys() {
        if !backends.contains_key(addr) {
            let bid = next_backend;
            next_backend = next_backend.wrapping_add(1).max(1);
            ops.push(Op::PutBackend {
                id: bid,
                value: BackendValue {
                    addr: addr.addr,
                    port: addr.port,
                    service_id: id,
                },
            });
            backends.insert(*addr, bid);
        }
    }

    // 2. Slot tables, per family, when what they say changed.
    let mut selection: BTreeMap<Family, (u32, u32)> = BTreeMap::new();
    // Every table the service names now, of any family (a family may be leaving).
    let old_selections: BTreeSet<u32> = state
        .services
        .values()
        .filter(|v| v.service_id == id && v.count > 0)
        .map(|v| v.selection)
        .collect();
    for (family, table) in &service.tables {
        let ids: Vec<u32> = table.iter().map(|a| backends[a]).collect();
        let current = state.selection_of(id, *family);
        let same = match current {
            Some((_, 0)) => ids.is_empty(),
            Some((sel, _)) => state.slots.get(&sel) == Some(&ids),
            None => false,
        };
        if same {
            selection.insert(*family, current.unwrap_or((0, 0)));
        } else if ids.is_empty() {
            selection.insert(*family, (0, 0));
        } else {
            let sel = next_selection;
            next_selection = next_selection.wrapping_add(1).max(1);
            selection.insert(*family, (sel, ids.len() as u32));
            ops.push(Op::PutSlots {
                selection: sel,
                backends: ids,
            });
        }
    }

    // 3. The entries: each names its family's table in one update.
    let keys = service.keys();
    for key in &keys {
        let (sel, count) = selection
            .get(&Family::of(key.vip))
            .copied()
            .unwrap_or((0, 0));
        let value = ServiceValue {
            service_id: id,
            selection: sel,
            count,
        };
        if state.services.get(key) != Some(&value) {
            ops.push(Op::PutService { key: *key, value });
        }
    }
    for vip in &service.vips {
        if state.vips.get(vip) != Some(&id) {
            ops.push(Op::PutVip {
                vip: *vip,
                service_id: id,
            });
        }
    }

    // 4. What it no longer has. Entries another service took over in this plan stay theirs.
    let wanted: BTreeSet<&ServiceKey> = keys.iter().collect();
    for (key, value) in &state.services {
        if value.service_id == id && !wanted.contains(key) {
            ops.push(Op::DeleteService { key: *key });
        }
    }
    for (vip, sid) in &state.vips {
        if *sid == id && !service.vips.contains(vip) {
            ops.push(Op::DeleteVip { vip: *vip });
        }
    }
    let in_use: BTreeSet<u32> = selection.values().map(|(s, _)| *s).collect();
    for sel in old_selections {
        if !in_use.contains(&sel) {
            if let Some(slots) = state.slots.get(&sel) {
                ops.push(Op::DeleteSlots {
                    selection: sel,
                    count: slots.len() as u32,
                });
            }
        }
    }
    for (addr, bid) in &backends {
        if !service.backends.contains_key(addr) {
            ops.push(Op::DeleteBackend { id: *bid });
        }
    }
    ops
}

/// Whether `state` is what `desired` asks for: the check the tests and the agent's
/// self-check use.
pub fn matches(desired: &Desired, state: &MapState) -> Result<(), String> {
    let mut expected_keys = BTreeSet::new();
    for service in desired.services.values() {
        let id = state
            .id_of(&service.name)
            .ok_or_else(|| format!("{} has no service id", service.name))?;
        for key in service.keys() {
            expected_keys.insert(key);
            let value = state
                .services
                .get(&key)
                .ok_or_else(|| format!("{}: entry {key:?} missing", service.name))?;
            if value.service_id != id {
                return Err(format!(
                    "{}: entry {key:?} names service {}",
                    service.name, value.service_id
                ));
            }
            let want = &service.tables[&Family::of(key.vip)];
            let have: Vec<BackendAddr> = if value.count == 0 {
                Vec::new()
            } else {
                state
                    .slots
                    .get(&value.selection)
                    .ok_or_else(|| format!("{}: table {} missing", service.name, value.selection))?
                    .iter()
                    .map(|bid| {
                        state
                            .backends
                            .get(bid)
                            .map(|b| BackendAddr {
                                addr: b.addr,
                                port: b.port,
                            })
                            .ok_or_else(|| format!("{}: backend {bid} missing", service.name))
                    })
                    .collect::<Result<_, _>>()?
            };
            if &have != want {
                return Err(format!("{}: table {have:?}, want {want:?}", service.name));
            }
        }
        for vip in &service.vips {
            if state.vips.get(vip) != Some(&id) {
                return Err(format!("{}: VIP {vip} not mapped", service.name));
            }
        }
        let backends: BTreeSet<BackendAddr> = state.backends_of(id).into_keys().collect();
        let want: BTreeSet<BackendAddr> = service.backends.keys().copied().collect();
        if backends != want {
            return Err(format!(
                "{}: backends {backends:?}, want {want:?}",
                service.name
            ));
        }
    }
    if let Some(extra) = state.services.keys().find(|k| !expected_keys.contains(k)) {
        return Err(format!("stale entry {extra:?}"));
    }
    let referenced = state.referenced_selections();
    if let Some(extra) = state.slots.keys().find(|s| !referenced.contains(s)) {
        return Err(format!("stale slot table {extra}"));
    }
    if state.names.len() != desired.services.len() {
        return Err(format!(
            "{} service ids claimed for {} services",
            state.names.len(),
            desired.services.len()
        ));
    }
    let vips: usize = desired.services.values().map(|s| s.vips.len()).sum();
    if state.vips.len() != vips {
        return Err(format!("{} VIPs mapped, {vips} wanted", state.vips.len()));
    }
    Ok(())
}

/// The invariant that holds after every op: every entry with backends names a table that
/// exists, whose length is its count and whose backends exist and belong to its service.
pub fn consistent(state: &MapState) -> Result<(), String> {
    for (key, value) in &state.services {
        if value.count == 0 {
            continue;
        }
        let slots = state
            .slots
            .get(&value.selection)
            .ok_or_else(|| format!("{key:?} names missing table {}", value.selection))?;
        if slots.len() != value.count as usize {
            return Err(format!(
                "{key:?}: count {} but table {} has {}",
                value.count,
                value.selection,
                slots.len()
            ));
        }
        for bid in slots {
            match state.backends.get(bid) {
                None => return Err(format!("{key:?}: table names missing backend {bid}")),
                Some(b) if b.service_id != value.service_id => {
                    return Err(format!(
                        "{key:?}: backend {bid} belongs to {}",
                        b.service_id
                    ))
                }
                Some(b) if Family::of(b.addr) != Family::of(key.vip) => {
                    return Err(format!("{key:?}: backend {bid} of the other family"))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
