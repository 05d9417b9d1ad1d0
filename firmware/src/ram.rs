//! A NOR flash in RAM for the host simulator and tests, with power cuts on demand.
//!
//! It behaves like NOR where it matters to the ring: erase sets bytes to `0xFF`, programming
//! can only clear bits (AND), writes and erases must be aligned — and a power cut stops an
//! operation part-way, leaving exactly the bytes done before it.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    NotAligned,
    OutOfBounds,
    /// The simulated power failed; nothing works until [`RamFlash::power_on`].
    PowerCut,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            RamFlashError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// Flash over any byte storage (`[u8; N]` on a device-less test, `Vec<u8>` on the host),
/// writing in `WRITE`-byte units and erasing `ERASE`-byte sectors.
pub struct RamFlash<S, const WRITE: usize = 4, const ERASE: usize = 4096> {
    mem: S,
    /// Bytes that may still be programmed or erased before the power fails.
    budget: Option<u64>,
    dead: bool,
    /// Bytes programmed so far (wear and power-cut planning).
    pub programmed: u64,
    pub erases: u64,
    /// Programming that had to clear bits of already-programmed bytes: a bug in the caller,
    /// since real flash may not accept it.
    pub overwrites: u64,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize>
    RamFlash<S, WRITE, ERASE>
{
    /// Flash over `mem` as it is (pass `0xFF` bytes for a blank chip).
    pub fn new(mem: S) -> Self {
        RamFlash {
            mem,
            budget: None,
            dead: false,
            programmed: 0,
            erases: 0,
            overwrites: 0,
        }
    }

    /// The power fails after `bytes` more bytes have been programmed or erased, in the
    /// middle of whatever operation reaches that point.
    pub fn cut_power_after(&mut self, bytes: u64) {
        self.budget = Some(bytes);
    }

    /// Cuts the power now.
    pub fn cut_power(&mut self) {
        self.dead = true;
    }

    /// Power returns: the contents are what the cut left.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.budget = None;
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    pub fn contents(&self) -> &[u8] {
        self.mem.as_ref()
    }

    /// How many of `want` bytes may be touched before the power fails.
    fn allow(&mut self, want: usize) -> Result<usize, RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        match self.budget {
            Some(b) if (b as usize) < want => {
                self.budget = Some(0);
                self.dead = true;
                Ok(b as usize)
            }
            Some(b) => {
                self.budget = Some(b - want as u64);
                Ok(want)
            }
            None => Ok(want),
        }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, RamFlashError> {
        let at = offset as usize;
        if !at.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(RamFlashError::NotAligned);
        }
        if at + len > self.mem.as_ref().len() {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(at)
    }
}

impl<S, const WRITE: usize, const ERASE: usize> ErrorType for RamFlash<S, WRITE, ERASE> {
    type Error = RamFlashError;
}

impl<S: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize> ReadNorFlash
    for RamFlash<S, WRITE, ERASE>
{
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        let at = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.mem.as_ref()[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.as_ref().len()
    }
}

impl<S: AsRef<[u8]> + AsMut<[u8]>, const WRITE: usize, const ERASE: usize> NorFlash
    for RamFlash<S, WRITE, ERASE>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if to < from {
            return Err(RamFlashError::OutOfBounds);
        }
        let at = self.check(from, (to - from) as usize, ERASE)?;
        let len = (to - from) as usize;
        let done = self.allow(len)?;
        self.mem.as_mut()[at..at + done].fill(0xFF);
        self.erases += 1;
        if done < len {
            return Err(RamFlashError::PowerCut);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = self.check(offset, bytes.len(), WRITE)?;
        let done = self.allow(bytes.len())?;
        let mem = &mut self.mem.as_mut()[at..at + done];
        for (cell, &b) in mem.iter_mut().zip(bytes) {
            if *cell & b != b {
                self.overwrites += 1;
            }
            *cell &= b;
        }
        self.programmed += done as u64;
        if done < bytes.len() {
            return Err(RamFlashError::PowerCut);
        }
        Ok(())
    }
}
