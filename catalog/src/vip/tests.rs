use std::path::Path;

use super::*;

fn svc(s: &str) -> ServiceName {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn alloc(range: &str) -> VipAllocator {
    VipAllocator::new(v4(range), None)
}

#[test]
fn same_service_same_vip_on_every_allocator() {
    let mut a = alloc("10.96.0.0/16");
    let mut b = alloc("10.96.0.0/16");
    let names: Vec<ServiceName> = (0..50).map(|i| svc(&format!("ns/s{i}"))).collect();
    for n in &names {
        a.allocate(n).unwrap();
    }
    // A different order on the other gateway.
    for n in names.iter().rev() {
        b.allocate(n).unwrap();
    }
    for n in &names {
        assert_eq!(a.vips(n), b.vips(n), "{n}");
    }
    let start = Ipv4Addr::from(0x0a60_0001 + (fnv1a(&names[0]) % 65534) as u32);
    assert_eq!(a.vips(&names[0]).unwrap().v4, start);
}

#[test]
fn allocate_is_idempotent_and_addresses_are_distinct_and_usable() {
    let mut a = alloc("10.0.0.0/29");
    let mut seen = BTreeSet::new();
    for i in 0..6 {
        let name = svc(&format!("ns/s{i}"));
        let vip = a.allocate(&name).unwrap();
        assert_eq!(a.allocate(&name).unwrap(), vip);
        assert!(
            vip.v4 > Ipv4Addr::new(10, 0, 0, 0),
            "not the network address"
        );
        assert!(
            vip.v4 < Ipv4Addr::new(10, 0, 0, 7),
            "not the broadcast address"
        );
        assert!(seen.insert(vip.v4), "{} twice", vip.v4);
    }
    let full = a.allocate(&svc("ns/s6")).unwrap_err();
    assert_eq!(full.to_string(), "VIP range 10.0.0.0/29 is full");
    assert!(a.vips(&svc("ns/s6")).is_none());
}

#[test]
fn released_addresses_come_back_to_their_service_and_are_reused_last() {
    let mut a = alloc("10.0.0.0/29"); // 6 usable
    let first = svc("ns/first");
    let vip = a.allocate(&first).unwrap();
    a.release(&first);
    assert!(a.vips(&first).is_none());
    assert_eq!(a.reserved(), 1);
    // Five new services fill the never-used addresses; none takes the reserved one.
    for i in 0..5 {
        let v = a.allocate(&svc(&format!("ns/n{i}"))).unwrap();
        assert_ne!(v.v4, vip.v4);
    }
    // Coming back: same address.
    assert_eq!(a.allocate(&first).unwrap(), vip);
    assert_eq!(a.reserved(), 0);
}

#[test]
fn when_exhausted_the_oldest_release_is_reused_first() {
    let mut a = alloc("10.0.0.0/30"); // 2 usable
    let (x, y) = (svc("ns/x"), svc("ns/y"));
    let vx = a.allocate(&x).unwrap();
    let vy = a.allocate(&y).unwrap();
    a.release(&y);
    a.release(&x);
    // y was released first, so it is the first to lose its address.
    assert_eq!(a.allocate(&svc("ns/z")).unwrap(), vy);
    assert_eq!(a.allocate(&svc("ns/w")).unwrap(), vx);
    assert!(a.allocate(&y).is_err());
    assert!(a.allocate(&x).is_err());
}

#[test]
fn tiny_ranges() {
    let mut a = alloc("10.0.0.5/32");
    assert_eq!(
        a.allocate(&svc("a/a")).unwrap().v4,
        Ipv4Addr::new(10, 0, 0, 5)
    );
    let mut a = alloc("10.0.0.4/31");
    let both: BTreeSet<Ipv4Addr> = ["a/a", "a/b"]
        .iter()
        .map(|n| a.allocate(&svc(n)).unwrap().v4)
        .collect();
    assert_eq!(both.len(), 2, "RFC 3021: both addresses of a /31");
}

#[test]
fn dual_stack() {
    let v6: Ipv6Net = "fd00:96::/112".parse().unwrap();
    let mut a = VipAllocator::new(v4("10.96.0.0/16"), Some(v6));
    let vips = a.allocate(&svc("shop/api")).unwrap();
    let six = vips.v6.expect("an IPv6 VIP");
    assert!(v6.contains(&six) && six != v6.network(), "{six}");
    assert_eq!(vips.addresses().len(), 2);
    // A whole /64 works (only the first 2^64 addresses are used anyway).
    let mut wide = VipAllocator::new(v4("10.96.0.0/16"), Some("fd00::/32".parse().unwrap()));
    assert!(wide.allocate(&svc("shop/api")).unwrap().v6.is_some());
}

fn save_and_load(a: &mut VipAllocator, path: &Path, range: &str) -> VipAllocator {
    a.save(path).unwrap();
    assert!(!a.is_dirty());
    VipAllocator::load(path, v4(range), None).unwrap()
}

#[test]
fn the_map_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vips.json");
    let mut a = alloc("10.0.0.0/29");
    let names: Vec<ServiceName> = (0..4).map(|i| svc(&format!("ns/s{i}"))).collect();
    for n in &names {
        a.allocate(n).unwrap();
    }
    a.release(&names[2]);
    a.release(&names[0]);
    assert!(a.is_dirty());
    let mut b = save_and_load(&mut a, &path, "10.0.0.0/29");
    assert!(!b.is_dirty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    for n in &names {
        assert_eq!(a.vips(n), b.vips(n));
    }
    // The release order survived: fill the two free addresses, then the next comes from s2.
    let s2 = a.entries[&names[2]].v4;
    b.allocate(&svc("ns/new1")).unwrap();
    b.allocate(&svc("ns/new2")).unwrap();
    assert_eq!(Some(b.allocate(&svc("ns/new3")).unwrap().v4), s2);
    assert_eq!(
        b.allocate(&names[0]).unwrap(),
        a.allocate(&names[0]).unwrap()
    );
}

#[test]
fn a_missing_file_is_an_empty_map_and_a_changed_range_drops_what_is_outside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vips.json");
    let empty = VipAllocator::load(&path, v4("10.0.0.0/24"), None).unwrap();
    assert_eq!(empty.active().count(), 0);

    let mut a = alloc("10.0.0.0/24");
    a.allocate(&svc("ns/a")).unwrap();
    let b = save_and_load(&mut a, &path, "10.1.0.0/24");
    assert_eq!(b.active().count(), 0);
    assert!(b.is_dirty(), "the dropped entry must be saved away");
}

#[test]
fn bad_files_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vips.json");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        VipAllocator::load(&path, v4("10.0.0.0/24"), None)
            .unwrap_err()
            .to_string()
    };
    let p = path.display();
    assert_eq!(load("{"), format!("VIP file {p}"));
    assert_eq!(
        load(r#"{"format":2,"entries":[]}"#),
        format!("{p}: format = 2: unknown format")
    );
    let entry = |name: &str, ip: &str| {
        format!(
            r#"{{"service":{{"namespace":"ns","name":"{name}"}},"ipv4":"{ip}","ipv6":null,"released":null}}"#
        )
    };
    assert_eq!(
        load(&format!(
            r#"{{"format":1,"entries":[{},{}]}}"#,
            entry("a", "10.0.0.1"),
            entry("a", "10.0.0.2")
        )),
        format!("{p}: entries[1].service = ns/a: listed twice")
    );
    assert_eq!(
        load(&format!(
            r#"{{"format":1,"entries":[{},{}]}}"#,
            entry("a", "10.0.0.1"),
            entry("b", "10.0.0.1")
        )),
        format!("{p}: entries[1].ipv4 = 10.0.0.1: held by two services")
    );
    let dir_as_file = VipAllocator::load(dir.path(), v4("10.0.0.0/24"), None).unwrap_err();
    assert!(
        matches!(dir_as_file, Error::VipFile { .. }),
        "{dir_as_file:?}"
    );
}

#[test]
fn release_unless_keeps_what_is_exported() {
    let mut a = alloc("10.0.0.0/24");
    let (x, y) = (svc("ns/x"), svc("ns/y"));
    a.allocate(&x).unwrap();
    let vy = a.allocate(&y).unwrap();
    a.release_unless(|n| *n == x);
    assert!(a.vips(&x).is_some());
    assert!(a.vips(&y).is_none());
    assert_eq!(a.allocate(&y).unwrap(), vy);
}
