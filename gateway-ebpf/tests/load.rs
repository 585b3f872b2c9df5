//! The kernel accepts every program (the verifier runs at load) and the maps take entries.
//! Needs root (CAP_BPF, CAP_NET_ADMIN); fails without it.

use isthmus_ebpf::layout::{BackendValue, Proto, ServiceKey, ServiceValue, SlotKey};
use isthmus_ebpf::{maps, Capacity, Datapath, Error};

#[test]
fn programs_load_and_maps_take_entries_up_to_capacity() {
    let capacity = Capacity {
        services: 4,
        backends: 8,
        slots: 16,
        flows: 64,
    };
    let mut dp = Datapath::load(capacity).unwrap_or_else(|e| panic!("load: {e:?}"));
    let key = ServiceKey {
        vip: "241.0.0.1".parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
    };
    dp.put_backend(
        1,
        &BackendValue {
            addr: "10.2.1.2".parse().unwrap(),
            port: 8080,
            service_id: 1,
        },
    )
    .unwrap();
    dp.put_slot(
        &SlotKey {
            selection: 1,
            index: 0,
        },
        1,
    )
    .unwrap();
    dp.put_service(
        &key,
        &ServiceValue {
            service_id: 1,
            selection: 1,
            count: 1,
        },
    )
    .unwrap();
    dp.put_vip(key.vip, 1).unwrap();
    assert_eq!(dp.count_entries(maps::SERVICES).unwrap(), 1);
    assert_eq!(dp.count_entries(maps::BACKENDS).unwrap(), 1);
    // A full hash map says so by name.
    for id in 2..=8 {
        dp.put_backend(
            id,
            &BackendValue {
                addr: "10.2.1.3".parse().unwrap(),
                port: 0,
                service_id: 1,
            },
        )
        .unwrap();
    }
    match dp.put_backend(
        9,
        &BackendValue {
            addr: "10.2.1.4".parse().unwrap(),
            port: 0,
            service_id: 1,
        },
    ) {
        Err(Error::MapFull { map }) => assert_eq!(map, maps::BACKENDS),
        other => panic!("a ninth backend in a map of 8: {other:?}"),
    }
    // Deleting what is not there is fine; deleting what is there empties the map.
    dp.delete_service(&key).unwrap();
    dp.delete_service(&key).unwrap();
    assert_eq!(dp.count_entries(maps::SERVICES).unwrap(), 0);
    assert!(dp.stats().unwrap().is_empty());
}
