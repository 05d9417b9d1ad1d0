//! The upstream path misbehaves under load: the broker is stopped and restarted on the same
//! port 20 times, and after each restart a TCP proxy between agent and broker stalls (no bytes
//! either way, long enough for keep-alives to lapse) or cuts every connection in the middle
//! of a packet. Every scan arrives, once by event id, in per-device order.

use darkleg_protocol::Step;
use darkleg_tests::proxy::Proxy;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

/// 20 in CI; `DARKLEG_CHAOS_ROUNDS` for a soak.
fn rounds() -> u64 {
    std::env::var("DARKLEG_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn broker_restarts_stalls_and_torn_packets_lose_nothing() {
    let mut rig = Rig::new("chaos", &[PortKind::Framed; 3]);
    let proxy = Proxy::start(rig.broker.port);
    // The agent reaches the broker only through the proxy; the subscriber directly.
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(&rig.config, text.replace(&rig.broker.url(), &proxy.url())).unwrap();
    let _agent = rig.start_agent();
    rig.wait_ports_open();

    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (i, pty) in rig.take_ptys().into_iter().enumerate() {
        let plan: Vec<_> = (0..150u64)
            .flat_map(|n| parcel_scans(5_000 * (i as u64 + 1) + n, Step::Pack))
            .collect();
        let cfg = FramedConfig {
            // Spread over the whole run (rounds of ~1.5 s).
            scan_interval: Duration::from_millis(1_500 * rounds() / plan.len() as u64),
            ..FramedConfig::new(&format!("chaos-{i}"), 31 + i as u64)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }

    let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
    let (mut restarts, mut stalls, mut cuts) = (0, 0, 0);
    for round in 0..rounds() {
        std::thread::sleep(Duration::from_millis(next(200, 500)));
        rig.broker.stop();
        std::thread::sleep(Duration::from_millis(next(100, 800)));
        rig.broker.restart().expect("mosquitto back on its port");
        restarts += 1;
        std::thread::sleep(Duration::from_millis(next(100, 400)));
        if round % 2 == 0 {
            proxy.stall();
            // Once past the 5 s keep-alive (the client gives up on a silent broker),
            // otherwise shorter than it.
            let ms = if round == 4 { 7_000 } else { next(300, 1_500) };
            std::thread::sleep(Duration::from_millis(ms));
            proxy.resume();
            stalls += 1;
        } else {
            // Once the agent is back through the proxy, tear its connection mid-stream.
            wait_until(Duration::from_secs(5), || proxy.connections() > 0);
            proxy.cut();
            cuts += 1;
        }
    }
    proxy.resume();

    let expected: usize = plans.values().map(Vec::len).sum();
    let duplicates = rig.wait_all_arrived(&scanners, &plans, Duration::from_secs(90));
    eprintln!(
        "{expected} scans through {restarts} broker restarts, {stalls} stalls, {cuts} cuts \
         ({} connections torn mid-packet): 0 lost, {duplicates} duplicate deliveries (same id)",
        proxy.cuts_mid_packet()
    );
    assert!(
        proxy.cuts_mid_packet() > 0,
        "some cut landed inside a packet"
    );
}
