//! The flash ring on a RAM flash: recovery, refusal when full, wear, power cuts.

use darkleg_firmware::ram::RamFlash;
use darkleg_firmware::ring::{
    record_buf, scan_record_len, Captured, NewScan, Ring, RingError, StoredScan,
};
use darkleg_protocol::Step;
use proptest::prelude::*;

type Flash = RamFlash<Vec<u8>, 4, 4096>;

fn blank(sectors: usize) -> Flash {
    RamFlash::new(vec![0xFF; sectors * 4096])
}

fn mount(flash: Flash) -> Ring<Flash> {
    let len = flash.contents().len() as u32;
    Ring::mount(flash, 0, len, &mut record_buf())
        .expect("mount")
        .0
}

fn scan(code: &str) -> NewScan<'_> {
    NewScan {
        step: Step::Pack,
        code,
        symbology: Some("]C1"),
        captured: Captured::Unix(1_795_300_000_000),
    }
}

fn code(i: u64) -> String {
    format!("00{:018}", 340_434_161_094_000_000u64 + i)
}

/// (seq, code) of every pending scan, read back from flash.
fn pending(ring: &mut Ring<Flash>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = None;
    for seq in ring.acked() + 1..ring.next_seq() {
        let mut buf = record_buf();
        if let Some((s, next)) = ring.read(seq, from, &mut buf).unwrap() {
            let s: StoredScan<'_> = s;
            out.push((s.seq, s.code.to_string()));
            from = Some(next);
        }
    }
    out
}

#[test]
fn scans_survive_a_reboot_and_sequence_numbers_continue() {
    let mut ring = mount(blank(4));
    let mut buf = record_buf();
    for i in 1..=10 {
        assert_eq!(ring.append(&scan(&code(i)), &mut buf), Ok(i));
    }
    ring.retire(4, &mut buf).unwrap();
    assert_eq!(ring.pending(), 6);
    let flash = ring.release();
    let (mut ring, report) = Ring::mount(flash, 0, 4 * 4096, &mut buf).unwrap();
    // Acks are written to flash only once nothing is pending (one write per burst, not
    // per scan); until then a reboot resends 1..=4 and the gateway re-acks them.
    assert_eq!(report.pending, 10);
    assert_eq!(report.torn, 0);
    ring.retire(4, &mut buf).unwrap();
    let got = pending(&mut ring);
    assert_eq!(got, (5..=10).map(|i| (i, code(i))).collect::<Vec<_>>());
    assert_eq!(ring.append(&scan("after-boot"), &mut buf), Ok(11));
    let mut b = record_buf();
    let (s, _) = ring.read(11, None, &mut b).unwrap().unwrap();
    assert_eq!(
        (s.code, s.symbology, s.step),
        ("after-boot", Some("]C1"), Step::Pack)
    );
}

#[test]
fn sequence_numbers_never_repeat_after_every_sector_was_recycled() {
    // All scans acked and the ring wrapped many times: no scan record holds the counter
    // any more, only the sector headers and ack records do.
    let mut ring = mount(blank(2));
    let mut buf = record_buf();
    for i in 1..=1_000 {
        let seq = ring.append(&scan(&code(i)), &mut buf).unwrap();
        ring.retire(seq, &mut buf).unwrap();
    }
    let flash = ring.release();
    assert_eq!(flash.overwrites, 0, "never programs a byte twice");
    let mut ring = mount(flash);
    assert_eq!(ring.pending(), 0);
    assert_eq!(ring.acked(), 1_000);
    assert_eq!(ring.append(&scan("next"), &mut buf), Ok(1_001));
}

#[test]
fn a_full_ring_refuses_and_never_overwrites_an_unacked_scan() {
    let mut ring = mount(blank(3));
    let mut buf = record_buf();
    let mut stored = 0u64;
    loop {
        match ring.append(&scan(&code(stored + 1)), &mut buf) {
            Ok(_) => stored += 1,
            Err(RingError::Full) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(stored > 200, "3 sectors hold {stored}");
    // Still refusing, and everything is still there after a reboot.
    assert_eq!(ring.append(&scan("x"), &mut buf), Err(RingError::Full));
    let mut ring = mount(ring.release());
    assert_eq!(pending(&mut ring).len() as u64, stored);
    // Acks free the oldest sector: capture resumes.
    ring.retire(stored / 2, &mut buf).unwrap();
    assert!(ring.append(&scan("room again"), &mut buf).is_ok());
    let flash = ring.release();
    assert_eq!(flash.overwrites, 0);
}

#[test]
fn a_torn_record_is_dropped_and_everything_before_it_kept() {
    let mut ring = mount(blank(4));
    let mut buf = record_buf();
    for i in 1..=5 {
        ring.append(&scan(&code(i)), &mut buf).unwrap();
    }
    let mut flash = ring.release();
    // The power fails 20 bytes into the next record.
    flash.cut_power_after(20);
    let mut ring = mount_keep(flash);
    assert!(ring.append(&scan(&code(6)), &mut buf).is_err());
    let mut flash = ring.release();
    flash.power_on();
    let (mut ring, report) = Ring::mount(flash, 0, 4 * 4096, &mut buf).unwrap();
    assert_eq!(report.torn, 1);
    assert_eq!(
        pending(&mut ring),
        (1..=5).map(|i| (i, code(i))).collect::<Vec<_>>()
    );
    // The torn sector is sealed: the next scan goes to a fresh one, and survives too.
    assert_eq!(ring.append(&scan(&code(6)), &mut buf), Ok(6));
    let mut ring = mount(ring.release());
    assert_eq!(pending(&mut ring).len(), 6);
    assert_eq!(ring.release().overwrites, 0);
}

/// Mounts without touching the power budget set on `flash`.
fn mount_keep(flash: Flash) -> Ring<Flash> {
    Ring::mount(flash, 0, 4 * 4096, &mut record_buf())
        .unwrap()
        .0
}

/// Counts erases per sector on the way through to a RAM flash.
struct WearMeter {
    inner: Flash,
    erases: Vec<u32>,
}

impl embedded_storage::nor_flash::ErrorType for WearMeter {
    type Error = darkleg_firmware::ram::RamFlashError;
}

impl embedded_storage::nor_flash::ReadNorFlash for WearMeter {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl embedded_storage::nor_flash::NorFlash for WearMeter {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.erases[from as usize / 4096] += 1;
        self.inner.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.inner.write(offset, bytes)
    }
}

#[test]
fn wear_spreads_evenly_over_sectors() {
    use embedded_storage::nor_flash::ReadNorFlash;
    let meter = WearMeter {
        inner: blank(8),
        erases: vec![0; 8],
    };
    let len = meter.capacity() as u32;
    let mut buf = record_buf();
    let (mut ring, _) = Ring::mount(meter, 0, len, &mut buf).unwrap();
    for i in 1..=20_000 {
        let seq = ring.append(&scan(&code(i)), &mut buf).unwrap();
        if seq.is_multiple_of(7) {
            ring.retire(seq, &mut buf).unwrap();
        }
    }
    let meter = ring.release();
    let (min, max) = (
        meter.erases.iter().min().unwrap(),
        meter.erases.iter().max().unwrap(),
    );
    assert!(*min >= 20, "every sector took its turn: {:?}", meter.erases);
    assert!(max - min <= 1, "round robin: {:?}", meter.erases);
    assert_eq!(meter.inner.overwrites, 0);
}

#[test]
fn capacity_of_a_256_kib_region() {
    // The figure quoted in README: SSCC scans (20 digits, `]C1`) on a 4-byte-write flash.
    let sectors = 256 * 1024 / 4096;
    let mut ring = mount(blank(sectors));
    let mut buf = record_buf();
    let mut n = 0u64;
    while ring.append(&scan(&code(n + 1)), &mut buf).is_ok() {
        n += 1;
    }
    let per_scan = scan_record_len(20, 3, 4);
    assert_eq!(per_scan, 52);
    // Each 4 KiB sector loses its 28-byte header; no spare sector is needed.
    let per_sector = (4096 - 28) / per_scan as u64;
    assert_eq!(n, per_sector * sectors as u64);
    println!("256 KiB ring: {n} scans of {per_scan} bytes");
}

#[test]
fn an_ack_beyond_anything_issued_moves_the_counter_for_good() {
    // The gateway remembers seq 500 from before this device's flash was wiped.
    let mut ring = mount(blank(2));
    let mut buf = record_buf();
    ring.retire(500, &mut buf).unwrap();
    let mut ring = mount(ring.release());
    assert_eq!(ring.append(&scan("a"), &mut buf), Ok(501));
}

#[test]
fn geometry_that_cannot_hold_a_ring_is_refused() {
    let flash = blank(1);
    assert!(matches!(
        Ring::mount(flash, 0, 4096, &mut record_buf()),
        Err(RingError::Geometry)
    ));
    let flash = blank(4);
    assert!(matches!(
        Ring::mount(flash, 100, 2 * 4096, &mut record_buf()),
        Err(RingError::Geometry)
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Scan(usize),
    /// Ack this fraction (per mille) of what is pending.
    Ack(u16),
    Reboot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..120).prop_map(Op::Scan),
        2 => (0u16..=1000).prop_map(Op::Ack),
        1 => Just(Op::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// For random scans, acks and reboots with the power cut at a random byte of a random
    /// flash write: every scan reported stored is still there or acked, under the sequence
    /// number it was given, and no sequence number is ever handed out twice.
    #[test]
    fn power_cut_at_any_byte_keeps_every_stored_scan(
        ops in proptest::collection::vec(op(), 1..120),
        cut_permille in 0u64..1000,
        sectors in 2usize..5,
    ) {
        // A dry run to learn how many bytes the run programs, then the real run with the
        // power failing at a chosen byte of that stream.
        let total = run(&ops, sectors, None).programmed;
        let cut = total * cut_permille / 1000;
        run(&ops, sectors, Some(cut));
    }
}

struct Run {
    programmed: u64,
}

fn run(ops: &[Op], sectors: usize, cut: Option<u64>) -> Run {
    let mut flash = blank(sectors);
    if let Some(c) = cut {
        flash.cut_power_after(c);
    }
    let len = (sectors * 4096) as u32;
    let mut buf = record_buf();
    // The model: what was reported stored, and what the gateway acked.
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut gateway_acked = 0u64;
    let mut highest_issued = 0u64;
    let mut ring = match Ring::mount(flash, 0, len, &mut buf) {
        Ok((r, _)) => r,
        Err(_) => return Run { programmed: 0 },
    };
    let mut programmed = 0;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Scan(n) => {
                let c = format!("{i:04}{}", "7".repeat(*n));
                match ring.append(&scan(&c), &mut buf) {
                    Ok(seq) => {
                        assert!(
                            seq > highest_issued,
                            "seq {seq} reused (had {highest_issued})"
                        );
                        highest_issued = seq;
                        stored.push((seq, c));
                    }
                    Err(RingError::Full) | Err(RingError::Flash(_)) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            Op::Ack(permille) => {
                let unacked: Vec<u64> = stored
                    .iter()
                    .map(|s| s.0)
                    .filter(|&s| s > gateway_acked)
                    .collect();
                if let Some(&up_to) = unacked.get(unacked.len() * *permille as usize / 1001) {
                    gateway_acked = up_to;
                    let _ = ring.retire(up_to, &mut buf);
                }
            }
            Op::Reboot => {
                let mut flash = ring.release();
                programmed += flash.programmed;
                flash.programmed = 0;
                let dead = flash.is_dead();
                flash.power_on();
                ring = check_after_boot(flash, len, &stored, gateway_acked);
                if dead {
                    // After the cut, the rest of the run is just more ordinary operation.
                    highest_issued = highest_issued.max(ring.next_seq() - 1);
                }
            }
        }
    }
    let mut flash = ring.release();
    programmed += flash.programmed;
    flash.power_on();
    let ring = check_after_boot(flash, len, &stored, gateway_acked);
    assert_eq!(ring.release().overwrites, 0);
    Run { programmed }
}

fn check_after_boot(flash: Flash, len: u32, stored: &[(u64, String)], acked: u64) -> Ring<Flash> {
    let (mut ring, _) = Ring::mount(flash, 0, len, &mut record_buf()).expect("remount");
    let on_flash = pending(&mut ring);
    for (seq, c) in stored.iter().filter(|s| s.0 > ring.acked().max(acked)) {
        assert!(
            on_flash.iter().any(|(s, code)| s == seq && code == c),
            "stored scan {seq} lost after a power cut"
        );
    }
    // Nothing pending that was not reported stored, nor under another number.
    for (seq, c) in &on_flash {
        if let Some((s, _)) = stored.iter().find(|(_, code)| code == c) {
            assert_eq!(s, seq, "scan {c} moved from seq {s} to {seq}");
        }
    }
    let max_stored = stored.iter().map(|s| s.0).max().unwrap_or(0);
    assert!(ring.next_seq() > max_stored, "counter went back");
    ring
}
