//! The flash ring log: every scan the gateway has not acknowledged yet, kept across power cuts.
//!
//! The region is a ring of erase sectors used in turn, so wear spreads evenly over all of
//! them. A sector in use starts with a header (epoch, the sequence counter, the last ack) and
//! holds records appended one after another, each with its own CRC:
//!
//! ```text
//! header: magic u32 | epoch u32 | next_seq u64 | acked u64 | crc32      (padded)
//! record: tag u8 | len u16 | body[len] | crc32(tag, len, body)           (padded)
//! scan body: seq u64 | captured u64 | flags u8 | step u8 | sym_len u8 | symbology | code
//! ack body:  up_to u64
//! ```
//!
//! Nothing is ever rewritten in place, so a power cut can only tear the record (or header)
//! being written: its CRC fails, boot drops it and keeps every record completed before it,
//! and the torn sector is sealed so nothing is appended behind garbage. A sector is erased
//! for reuse only when every scan in it is acked; if the oldest sector still holds an
//! unacked scan the ring is full and [`Ring::append`] refuses — it never overwrites.
//!
//! Sequence numbers must never repeat (the gateway would take a new scan for a retransmit),
//! so the counter lives in every sector header and every ack record as well as in the scans.

use darkleg_protocol::crc32::crc32;
use darkleg_protocol::Step;
use embedded_storage::nor_flash::NorFlash;

const SECTOR_MAGIC: u32 = 0x314C_4B44; // "DKL1"
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 4;
const TAG_SCAN: u8 = 0x5C;
const TAG_ACK: u8 = 0xAC;
const ERASED: u8 = 0xFF;

/// Longest code the scanner stores; longer reads are refused (a 2D label rarely exceeds 200).
pub const MAX_CODE_LEN: usize = 256;
/// Longest AIM symbology identifier kept (`]C1`, `]Q3`, …).
pub const MAX_SYMBOLOGY_LEN: usize = 4;
const SCAN_FIXED: usize = 8 + 8 + 1 + 1 + 1;
const MAX_BODY: usize = SCAN_FIXED + MAX_SYMBOLOGY_LEN + MAX_CODE_LEN;
/// Largest record as written, padded for any supported write size.
const MAX_RECORD: usize = (3 + MAX_BODY + 4).div_ceil(16) * 16;

/// A scratch buffer large enough for any record; the caller owns it so the ring stays small.
pub type RecordBuf = [u8; MAX_RECORD];

/// An empty [`RecordBuf`].
pub const fn record_buf() -> RecordBuf {
    [0; MAX_RECORD]
}

/// Flash bytes one stored scan takes (record header, body, CRC, padding) for a write size.
pub const fn scan_record_len(code_len: usize, symbology_len: usize, write_size: usize) -> usize {
    let align = if write_size > 4 { write_size } else { 4 };
    (3 + SCAN_FIXED + symbology_len + code_len + 4).div_ceil(align) * align
}

/// When a scan was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured {
    /// Unix milliseconds: the device had a gateway `TimeSync` when it scanned.
    Unix(u64),
    /// The device's monotonic milliseconds since the boot that took the scan.
    Monotonic(u64),
}

/// A scan to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewScan<'a> {
    pub step: Step,
    pub code: &'a str,
    pub symbology: Option<&'a str>,
    pub captured: Captured,
}

/// A scan read back from flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredScan<'b> {
    pub seq: u64,
    pub step: Step,
    pub code: &'b str,
    pub symbology: Option<&'b str>,
    pub captured: Captured,
}

/// Where a record starts: sector index and byte offset within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    sector: u32,
    off: u32,
}

/// Why the ring could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError<E> {
    /// The flash driver failed; whatever was being written is not stored.
    Flash(E),
    /// Every sector holds unacked scans: refuse new ones until the gateway acks.
    Full,
    /// The code or symbology exceeds [`MAX_CODE_LEN`] / [`MAX_SYMBOLOGY_LEN`].
    TooLong,
    /// The region or the flash geometry cannot hold a ring (see [`Ring::mount`]).
    Geometry,
}

impl<E> From<E> for RingError<E> {
    fn from(e: E) -> Self {
        RingError::Flash(e)
    }
}

/// What mounting found, for the boot log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountReport {
    /// The flash held no ring (new device or wiped); sector 0 was formatted.
    pub formatted: bool,
    /// Nothing was ever stored or acked: the device does not know where its sequence
    /// numbers stand until a gateway tells it (see [`Ring::record_contact`]).
    pub blank: bool,
    /// Records that failed their CRC (torn by a power cut) and were dropped.
    pub torn: u32,
    /// Unacked scans recovered.
    pub pending: u32,
}

enum Slot {
    Record {
        tag: u8,
        len: usize,
        next: u32,
    },
    /// Erased flash: nothing written here yet.
    End,
    /// Not a valid record: a torn write, or garbage.
    Torn,
}

/// The ring over a flash region `[base, base + sectors * ERASE_SIZE)`.
pub struct Ring<F> {
    flash: F,
    base: u32,
    sectors: u32,
    head: u32,
    head_epoch: u32,
    write_off: u32,
    /// The head cannot take more records (torn tail, or stray bytes behind the last record).
    sealed: bool,
    /// First record that may hold an unacked scan; equals the write position when none does.
    tail: Pos,
    pending: u32,
    next_seq: u64,
    acked: u64,
    durable_acked: u64,
}

impl<F: NorFlash> Ring<F> {
    const ALIGN: usize = if F::WRITE_SIZE > 4 { F::WRITE_SIZE } else { 4 };
    const SECTOR: u32 = F::ERASE_SIZE as u32;
    const HEADER: u32 = (HEADER_LEN.div_ceil(Self::ALIGN) * Self::ALIGN) as u32;

    /// Recovers the ring from flash after a boot (or formats a blank region).
    ///
    /// `base` and `len` must be multiples of the erase size with room for two sectors; the
    /// flash must write in units of at most 16 bytes and read in units dividing 4.
    pub fn mount(
        flash: F,
        base: u32,
        len: u32,
        buf: &mut RecordBuf,
    ) -> Result<(Self, MountReport), RingError<F::Error>> {
        let sector = Self::SECTOR;
        let geometry_ok = F::WRITE_SIZE <= 16
            && 4 % F::READ_SIZE == 0
            && (sector as usize).is_multiple_of(Self::ALIGN)
            && sector as usize >= 2 * MAX_RECORD + Self::HEADER as usize
            && base.is_multiple_of(sector)
            && len.is_multiple_of(sector)
            && len / sector >= 2
            && (base as usize + len as usize) <= flash.capacity();
        if !geometry_ok {
            return Err(RingError::Geometry);
        }
        let mut ring = Ring {
            flash,
            base,
            sectors: len / sector,
            head: 0,
            head_epoch: 0,
            write_off: Self::HEADER,
            sealed: false,
            tail: Pos { sector: 0, off: 0 },
            pending: 0,
            next_seq: 1,
            acked: 0,
            durable_acked: 0,
        };
        let mut report = MountReport::default();

        // The newest valid header is the head; the counters are the highest anywhere.
        let mut newest: Option<(u32, u32)> = None;
        let mut max_seq = 0u64;
        for s in 0..ring.sectors {
            let Some(h) = ring.header(s)? else { continue };
            if newest.is_none_or(|(_, e)| h.epoch > e) {
                newest = Some((s, h.epoch));
            }
            max_seq = max_seq.max(h.next_seq.saturating_sub(1));
            ring.acked = ring.acked.max(h.acked);
        }
        let Some((head, epoch)) = newest else {
            ring.format(0, 1)?;
            report.formatted = true;
            report.blank = true;
            ring.tail = ring.end();
            return Ok((ring, report));
        };
        ring.head = head;
        ring.head_epoch = epoch;

        // Every record in every valid sector, oldest sector first.
        let mut any_record = false;
        let mut s = ring.next(head);
        loop {
            if ring.header(s)?.is_some() {
                let mut off = Self::HEADER;
                loop {
                    match ring.slot(s, off, buf)? {
                        Slot::Record { tag, len, next } => {
                            any_record = true;
                            let body = &buf[3..3 + len];
                            let seq = read_u64(body, 0);
                            if tag == TAG_ACK {
                                ring.acked = ring.acked.max(seq);
                            }
                            max_seq = max_seq.max(seq);
                            off = next;
                        }
                        Slot::End => {
                            if s == head && !ring.erased_from(s, off, buf)? {
                                ring.sealed = true;
                            }
                            break;
                        }
                        Slot::Torn => {
                            report.torn += 1;
                            if s == head {
                                ring.sealed = true;
                            }
                            break;
                        }
                    }
                }
                if s == head {
                    ring.write_off = off;
                }
            }
            if s == head {
                break;
            }
            s = ring.next(s);
        }
        ring.durable_acked = ring.acked;
        ring.next_seq = max_seq.max(ring.acked) + 1;
        report.blank = ring.next_seq == 1 && !any_record;

        // The tail: the first scan the gateway has not acked.
        ring.tail = ring.end();
        let mut pos = Some(ring.oldest());
        let mut found_tail = false;
        while let Some(p) = pos {
            let Some((tag, at, next)) = ring.step_at(p, buf)? else {
                break;
            };
            if tag == TAG_SCAN && read_u64(&buf[3..], 0) > ring.acked {
                if !found_tail {
                    ring.tail = at;
                    found_tail = true;
                }
                ring.pending += 1;
            }
            pos = Some(next);
        }
        report.pending = ring.pending;
        Ok((ring, report))
    }

    /// Stores a scan and returns its sequence number. Only an `Ok` means it is in flash.
    pub fn append(
        &mut self,
        scan: &NewScan<'_>,
        buf: &mut RecordBuf,
    ) -> Result<u64, RingError<F::Error>> {
        let sym = scan.symbology.unwrap_or("");
        if scan.code.len() > MAX_CODE_LEN || sym.len() > MAX_SYMBOLOGY_LEN {
            return Err(RingError::TooLong);
        }
        let seq = self.next_seq;
        let (unix, at) = match scan.captured {
            Captured::Unix(t) => (1u8, t),
            Captured::Monotonic(t) => (0u8, t),
        };
        let body_len = SCAN_FIXED + sym.len() + scan.code.len();
        let body = &mut buf[3..3 + body_len];
        body[..8].copy_from_slice(&seq.to_le_bytes());
        body[8..16].copy_from_slice(&at.to_le_bytes());
        body[16] = unix;
        body[17] = step_code(scan.step);
        body[18] = sym.len() as u8;
        body[19..19 + sym.len()].copy_from_slice(sym.as_bytes());
        body[19 + sym.len()..].copy_from_slice(scan.code.as_bytes());
        self.write_record(TAG_SCAN, body_len, buf)?;
        self.next_seq += 1;
        if self.pending == 0 {
            // The new scan is the first unacked one.
            self.tail = Pos {
                sector: self.head,
                off: self.write_off - Self::padded(3 + body_len + 4),
            };
        }
        self.pending += 1;
        Ok(seq)
    }

    /// The gateway acked every scan up to `up_to`: their space becomes reusable. An ack
    /// record is written when nothing is left pending (so a reboot does not resend) or when
    /// the gateway knows sequence numbers this device never issued (its flash was wiped).
    pub fn retire(&mut self, up_to: u64, buf: &mut RecordBuf) -> Result<(), RingError<F::Error>> {
        if up_to <= self.acked {
            return Ok(());
        }
        self.acked = up_to;
        let floor_moved = up_to >= self.next_seq;
        if floor_moved {
            self.next_seq = up_to + 1;
        }
        let end = self.end();
        let mut pos = self.tail;
        while pos != end {
            let Some((tag, at, next)) = self.step_at(pos, buf)? else {
                pos = end;
                break;
            };
            if tag == TAG_SCAN {
                if read_u64(&buf[3..], 0) > up_to {
                    pos = at;
                    break;
                }
                self.pending = self.pending.saturating_sub(1);
            }
            pos = next;
        }
        self.tail = pos;
        if pos == end {
            self.pending = 0;
        }
        if (self.pending == 0 || floor_moved) && self.durable_acked < self.acked {
            buf[3..11].copy_from_slice(&self.acked.to_le_bytes());
            match self.write_record(TAG_ACK, 8, buf) {
                // Losing an ack record only costs a resend after reboot.
                Ok(()) | Err(RingError::Full) => {}
                Err(e) => return Err(e),
            }
            if self.pending == 0 {
                self.tail = self.end();
            }
        }
        Ok(())
    }

    /// Writes an ack record even if nothing changed: the first answer from a gateway, which
    /// tells a blank device where its sequence numbers stand, must survive a reboot.
    pub fn record_contact(&mut self, buf: &mut RecordBuf) -> Result<(), RingError<F::Error>> {
        buf[3..11].copy_from_slice(&self.acked.to_le_bytes());
        self.write_record(TAG_ACK, 8, buf)?;
        self.durable_acked = self.acked;
        if self.pending == 0 {
            self.tail = self.end();
        }
        Ok(())
    }

    /// Reads the scan with sequence `seq`, searching from `from` (a position returned by an
    /// earlier read) or from the first unacked record. Returns it with the position after.
    pub fn read<'b>(
        &mut self,
        seq: u64,
        from: Option<Pos>,
        buf: &'b mut RecordBuf,
    ) -> Result<Option<(StoredScan<'b>, Pos)>, RingError<F::Error>> {
        if seq <= self.acked {
            return Ok(None);
        }
        let end = self.end();
        let mut pos = from.unwrap_or(self.tail);
        let found = loop {
            if pos == end {
                return Ok(None);
            }
            let Some((tag, _, next)) = self.step_at(pos, buf)? else {
                return Ok(None);
            };
            if tag == TAG_SCAN {
                let s = read_u64(&buf[3..], 0);
                if s == seq {
                    break next;
                }
                if s > seq {
                    // Not at or after `from`: search from the tail instead.
                    if from.is_some() {
                        return self.read(seq, None, buf);
                    }
                    return Ok(None);
                }
            }
            pos = next;
        };
        let buf: &'b RecordBuf = buf;
        let len = u16::from_le_bytes([buf[1], buf[2]]) as usize;
        Ok(decode_scan(&buf[3..3 + len]).map(|s| (s, found)))
    }

    /// Scans stored and not yet acked.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// The sequence number the next scan gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence the gateway acked (as far as this device knows).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Sectors in the ring.
    pub fn sectors(&self) -> u32 {
        self.sectors
    }

    /// Gives the flash back (a simulator "pulling the battery" keeps it for the next boot).
    pub fn release(self) -> F {
        self.flash
    }

    // ---- writing ----------------------------------------------------------------------

    const fn padded(n: usize) -> u32 {
        (n.div_ceil(Self::ALIGN) * Self::ALIGN) as u32
    }

    /// Appends the record whose body is already in `buf[3..3 + body_len]`.
    fn write_record(
        &mut self,
        tag: u8,
        body_len: usize,
        buf: &mut RecordBuf,
    ) -> Result<(), RingError<F::Error>> {
        let total = Self::padded(3 + body_len + 4);
        if self.sealed || self.write_off + total > Self::SECTOR {
            self.open_next()?;
        }
        buf[0] = tag;
        buf[1..3].copy_from_slice(&(body_len as u16).to_le_bytes());
        let crc = crc32(&buf[..3 + body_len]);
        buf[3 + body_len..7 + body_len].copy_from_slice(&crc.to_le_bytes());
        buf[7 + body_len..total as usize].fill(ERASED);
        let at = self.addr(self.head, self.write_off);
        if let Err(e) = self.flash.write(at, &buf[..total as usize]) {
            // Whatever reached the flash may be torn: never append behind it. The record
            // counts as not stored — unless it reads back whole, because then a reboot
            // would find it and its sequence number must not be handed out twice.
            self.sealed = true;
            let mut check = record_buf();
            if matches!(
                self.slot(self.head, self.write_off, &mut check),
                Ok(Slot::Record { .. })
            ) {
                self.write_off += total;
                return Ok(());
            }
            return Err(RingError::Flash(e));
        }
        self.write_off += total;
        Ok(())
    }

    /// Moves the head to the next sector, erasing it, if no unacked scan lives there.
    fn open_next(&mut self) -> Result<(), RingError<F::Error>> {
        let n = self.next(self.head);
        if self.pending > 0 && self.tail.sector == n {
            return Err(RingError::Full);
        }
        self.format(n, self.head_epoch.wrapping_add(1))?;
        if self.pending == 0 {
            self.tail = self.end();
        }
        Ok(())
    }

    fn format(&mut self, sector: u32, epoch: u32) -> Result<(), RingError<F::Error>> {
        let start = self.addr(sector, 0);
        self.flash.erase(start, start + Self::SECTOR)?;
        let mut h = [ERASED; 32];
        h[0..4].copy_from_slice(&SECTOR_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&epoch.to_le_bytes());
        h[8..16].copy_from_slice(&self.next_seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.acked.to_le_bytes());
        let crc = crc32(&h[..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        // Until the header is complete the sector is garbage to a reboot, which is right.
        self.head = sector;
        self.head_epoch = epoch;
        self.write_off = Self::HEADER;
        self.sealed = true;
        self.flash.write(start, &h[..Self::HEADER as usize])?;
        self.sealed = false;
        self.durable_acked = self.acked;
        Ok(())
    }

    // ---- reading ----------------------------------------------------------------------

    fn addr(&self, sector: u32, off: u32) -> u32 {
        self.base + sector * Self::SECTOR + off
    }

    fn next(&self, sector: u32) -> u32 {
        (sector + 1) % self.sectors
    }

    fn end(&self) -> Pos {
        Pos {
            sector: self.head,
            off: self.write_off,
        }
    }

    /// The oldest valid sector's first record.
    fn oldest(&self) -> Pos {
        Pos {
            sector: self.next(self.head),
            off: Self::HEADER,
        }
    }

    fn header(&mut self, sector: u32) -> Result<Option<Header>, F::Error> {
        let mut h = [0u8; 28];
        self.flash.read(self.addr(sector, 0), &mut h)?;
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        if magic != SECTOR_MAGIC || crc != crc32(&h[..24]) {
            return Ok(None);
        }
        Ok(Some(Header {
            epoch: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            next_seq: read_u64(&h, 8),
            acked: read_u64(&h, 16),
        }))
    }

    /// Reads the record at `off` of `sector` into `buf`.
    fn slot(&mut self, sector: u32, off: u32, buf: &mut RecordBuf) -> Result<Slot, F::Error> {
        if off + 4 > Self::SECTOR {
            return Ok(Slot::End);
        }
        let at = self.addr(sector, off);
        self.flash.read(at, &mut buf[..4])?;
        let (tag, len) = (buf[0], u16::from_le_bytes([buf[1], buf[2]]) as usize);
        if tag == ERASED {
            return Ok(Slot::End);
        }
        let ok_len = match tag {
            TAG_SCAN => (SCAN_FIXED..=MAX_BODY).contains(&len),
            TAG_ACK => len == 8,
            _ => false,
        };
        if !ok_len {
            return Ok(Slot::Torn);
        }
        let total = Self::padded(3 + len + 4);
        if off + total > Self::SECTOR {
            return Ok(Slot::Torn);
        }
        self.flash.read(at, &mut buf[..total as usize])?;
        let stored = u32::from_le_bytes([buf[3 + len], buf[4 + len], buf[5 + len], buf[6 + len]]);
        if stored != crc32(&buf[..3 + len]) {
            return Ok(Slot::Torn);
        }
        if tag == TAG_SCAN && decode_scan(&buf[3..3 + len]).is_none() {
            return Ok(Slot::Torn);
        }
        Ok(Slot::Record {
            tag,
            len,
            next: off + total,
        })
    }

    /// The first record at or after `pos` (into `buf`): its tag, where it starts and the
    /// position after it, crossing into the next sector at a sector's end. `None` at the
    /// end of the log.
    fn step_at(
        &mut self,
        pos: Pos,
        buf: &mut RecordBuf,
    ) -> Result<Option<(u8, Pos, Pos)>, F::Error> {
        let mut pos = pos;
        loop {
            if pos == self.end() {
                return Ok(None);
            }
            let valid = pos.sector == self.head || self.header(pos.sector)?.is_some();
            if valid {
                if let Slot::Record { tag, next, .. } = self.slot(pos.sector, pos.off, buf)? {
                    return Ok(Some((
                        tag,
                        pos,
                        Pos {
                            sector: pos.sector,
                            off: next,
                        },
                    )));
                }
            }
            if pos.sector == self.head {
                return Ok(None);
            }
            pos = Pos {
                sector: self.next(pos.sector),
                off: Self::HEADER,
            };
        }
    }

    /// True if `sector` is erased from `off` to its end.
    fn erased_from(
        &mut self,
        sector: u32,
        off: u32,
        buf: &mut RecordBuf,
    ) -> Result<bool, F::Error> {
        let mut off = off;
        while off < Self::SECTOR {
            let n = (Self::SECTOR - off).min(buf.len() as u32 / 4 * 4);
            self.flash
                .read(self.addr(sector, off), &mut buf[..n as usize])?;
            if buf[..n as usize].iter().any(|&b| b != ERASED) {
                return Ok(false);
            }
            off += n;
        }
        Ok(true)
    }
}

struct Header {
    epoch: u32,
    next_seq: u64,
    acked: u64,
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn step_code(step: Step) -> u8 {
    Step::ALL.iter().position(|&s| s == step).unwrap_or(0) as u8
}

fn decode_scan(body: &[u8]) -> Option<StoredScan<'_>> {
    if body.len() < SCAN_FIXED {
        return None;
    }
    let at = read_u64(body, 8);
    let captured = match body[16] {
        1 => Captured::Unix(at),
        0 => Captured::Monotonic(at),
        _ => return None,
    };
    let step = *Step::ALL.get(body[17] as usize)?;
    let sym_len = body[18] as usize;
    let sym = body.get(SCAN_FIXED..SCAN_FIXED + sym_len)?;
    let code = body.get(SCAN_FIXED + sym_len..)?;
    Some(StoredScan {
        seq: read_u64(body, 0),
        step,
        code: core::str::from_utf8(code).ok()?,
        symbology: match sym_len {
            0 => None,
            _ => Some(core::str::from_utf8(sym).ok()?),
        },
        captured,
    })
}
