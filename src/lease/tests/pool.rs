//! The onion pool's invariants: a lease takes a published service without waiting for a publication, no
//! address is given twice, a taken key is the lease's for good, and slots not taken survive a restart.

use super::*;

fn pooled(size: usize) -> World {
    world_with(|s| {
        s.onion_pool = size;
        s.max_leases_per_requester = 100;
    })
}

/// Start the pool's filler and wait until `size` slots are published.
async fn fill(w: &World, size: usize) {
    let svc = Arc::clone(&w.svc);
    tokio::spawn(async move { svc.run_onion_pool().await });
    wait_ready(w, size).await;
}

async fn wait_ready(w: &World, size: usize) {
    for _ in 0..500 {
        if w.svc.pool_ready() == size {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool has {} ready, wanted {size}", w.svc.pool_ready());
}

fn address_of(reply: &Reply) -> String {
    let Reply::Ok { access, .. } = reply else { panic!("{reply:?}") };
    access.onion_address.clone().expect("onion address")
}

/// Addresses of the slots whose key is still in the pool.
fn pool_addresses(w: &World) -> HashSet<String> {
    w.cluster.pool.lock().unwrap().values().map(|k| fake_address(k)).collect()
}

#[tokio::test]
async fn a_new_lease_takes_a_published_service_from_the_pool_and_the_pool_refills() {
    let w = pooled(2);
    fill(&w, 2).await;
    let waiting = pool_addresses(&w);
    assert_eq!(waiting.len(), 2, "each slot's key is in the cluster");

    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let address = address_of(&reply);
    assert!(waiting.contains(&address), "the lease got a pool service");
    let Reply::Ok { access, .. } = &reply else { unreachable!() };
    // Handed over, not published again: the reply did not wait for a publication.
    assert_eq!(w.onion.adopted.lock().unwrap().len(), 1);
    assert!(!w.onion.published.lock().unwrap().iter().any(|(id, _)| *id == access.lease_id));
    // The slot's key is the lease's now, and is no longer in the pool.
    let key = w.cluster.load_onion_key(&access.lease_id).await.unwrap().expect("the lease's key");
    assert_eq!(fake_address(&key), address);
    assert!(!pool_addresses(&w).contains(&address));

    wait_ready(&w, 2).await;
    assert_eq!(pool_addresses(&w).len(), 2, "refilled with a fresh slot");
    assert!(!pool_addresses(&w).contains(&address));
}

#[tokio::test]
async fn no_address_is_given_twice_even_in_a_burst_larger_than_the_pool() {
    let w = pooled(3);
    fill(&w, 3).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let svc = Arc::clone(&w.svc);
        tasks.push(tokio::spawn(async move {
            let mut req = create(&format!("burst{i}"), &format!("tok:http:mint.test:100:{i}"));
            if let Incoming::Create { route, .. } = &mut req {
                route.requester = format!("who{i}");
            }
            svc.handle(req).await.unwrap()
        }));
    }
    let mut given = HashSet::new();
    for t in tasks {
        let address = address_of(&t.await.unwrap());
        assert!(given.insert(address.clone()), "{address} given twice");
    }
    assert_eq!(given.len(), 12);
    // Some came from the pool, the rest were published for their lease; none is still waiting in the pool.
    let adopted = w.onion.adopted.lock().unwrap().len();
    assert!((1..=12).contains(&adopted), "{adopted}");
    wait_ready(&w, 3).await;
    assert!(pool_addresses(&w).is_disjoint(&given));
    // Every lease holds its own key, and it is the address it was given.
    let keys: HashSet<String> = w.cluster.keys.lock().unwrap().values().map(|k| fake_address(k)).collect();
    assert_eq!(keys, given);
}

#[tokio::test]
async fn a_failed_handover_publishes_the_bound_key_for_the_lease() {
    let w = pooled(1);
    fill(&w, 1).await;
    let waiting = pool_addresses(&w);
    *w.onion.fail_adopt.lock().unwrap() = true;
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let address = address_of(&reply);
    // The key taken for the lease is the one published, under the lease: the address stays the slot's.
    assert!(waiting.contains(&address));
    let Reply::Ok { access, .. } = &reply else { unreachable!() };
    assert!(w.onion.published.lock().unwrap().contains(&(access.lease_id.clone(), address.clone())));
    assert!(!pool_addresses(&w).contains(&address));
}

#[tokio::test]
async fn after_a_restart_slots_not_taken_come_back_and_a_taken_key_stays_its_leases() {
    let w = pooled(2);
    fill(&w, 2).await;
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let address = address_of(&reply);
    wait_ready(&w, 2).await;
    let waiting = pool_addresses(&w);

    // A new process on the same cluster: the waiting slots are published again, not replaced, and the
    // lease's key is not among them.
    let r = restarted(&w, |_| {});
    fill(&r, 2).await;
    let republished: HashSet<String> = r.onion.published.lock().unwrap().iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(republished, waiting);
    assert!(!republished.contains(&address));
    assert_eq!(*r.onion.made.lock().unwrap(), 1000, "no new key was needed");

    // The reconciler brings the lease back under its own address.
    r.svc.reconcile_once().await.unwrap();
    for _ in 0..200 {
        if r.onion.published.lock().unwrap().iter().any(|(_, a)| *a == address) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Reply::Ok { access, .. } = &reply else { unreachable!() };
    assert!(r.onion.published.lock().unwrap().contains(&(access.lease_id.clone(), address.clone())));
}

#[tokio::test]
async fn a_smaller_pool_after_a_restart_forgets_the_extra_slots() {
    let w = pooled(3);
    fill(&w, 3).await;
    let r = restarted(&w, |s| s.onion_pool = 1);
    fill(&r, 1).await;
    assert_eq!(pool_addresses(&r).len(), 1);
    assert_eq!(r.onion.published.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_pooled_lease_goes_like_any_other() {
    let w = pooled(1);
    fill(&w, 1).await;
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let Reply::Ok { access, .. } = &reply else { panic!("{reply:?}") };
    w.cluster.leases.lock().unwrap().get_mut(&access.lease_id).unwrap().expires_at = now_secs() - 1;
    w.svc.reconcile_once().await.unwrap();
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert!(!w.onion.running.lock().unwrap().contains_key(&access.lease_id), "its onion service stopped");
    assert!(w.cluster.load_onion_key(&access.lease_id).await.unwrap().is_none(), "its key went with it");
}

#[tokio::test]
async fn reconcile_passes_leave_running_services_alone() {
    // Scale: with hundreds of leases a pass every few seconds must not read every lease's key again.
    let w = pooled(0);
    for i in 0..3 {
        let mut req = create(&format!("r{i}"), &format!("tok:http:mint.test:100:{i}"));
        if let Incoming::Create { route, .. } = &mut req {
            route.requester = format!("who{i}");
        }
        assert!(matches!(w.svc.handle(req).await.unwrap(), Reply::Ok { .. }));
    }
    assert!(w.onion.restored.lock().unwrap().is_empty(), "new leases publish ahead of restores");
    let loads = *w.cluster.key_loads.lock().unwrap();
    for _ in 0..5 {
        w.svc.reconcile_once().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*w.cluster.key_loads.lock().unwrap(), loads, "a pass re-read the keys of running services");
    // A service that stopped (the process lost it) is restored on the next pass.
    let lease = w.cluster.leases.lock().unwrap().keys().next().cloned().unwrap();
    w.onion.running.lock().unwrap().remove(&lease);
    w.svc.reconcile_once().await.unwrap();
    for _ in 0..100 {
        if w.onion.running.lock().unwrap().contains_key(&lease) {
            assert_eq!(*w.onion.restored.lock().unwrap(), [lease], "a restore must queue behind new leases");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the lost service was not restored");
}
