//! The records of a zip archive other than member data: local headers, data
//! descriptors, central directory records and the end record, each checked
//! against what the stream held.

use super::error::method_name;
use super::names::{ExtraProblem, check_extra, check_extra_central, decode_name};
use super::*;

impl ZipDemux {
    /// A whole signature is in `buf`: the record it starts.
    pub(super) fn signature(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let sig: [u8; 4] = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        self.state = match sig {
            LOCAL if self.central_start.is_some() => {
                return Err(
                    self.corrupt(at, "a local file header after the central directory began")
                );
            }
            LOCAL => State::Local,
            CENTRAL => {
                self.central_start.get_or_insert(at);
                State::Central
            }
            END => State::EndRecord,
            ZIP64_END | ZIP64_LOCATOR => {
                return Err(ZipError::Unsupported {
                    offset: at,
                    member: None,
                    what: "zip64 end of central directory record: zip64 archives are not read by ovaio".into(),
                });
            }
            _ => {
                return Err(self.corrupt(
                    at,
                    format!(
                        "expected a zip local file header, central directory record or end record, found bytes {:02x} {:02x} {:02x} {:02x}",
                        sig[0], sig[1], sig[2], sig[3]
                    ),
                ));
            }
        };
        Ok(())
    }

    /// A whole local header is in `buf`: checks it and starts its member.
    pub(super) fn local(&mut self) -> Result<MemberHeader, ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        if self.members.len() >= limits::MAX_ENTRIES {
            return Err(ZipError::TooManyMembers {
                offset: at,
                limit: limits::MAX_ENTRIES,
            });
        }
        let flags = le16(&b, 6);
        let method = le16(&b, 8);
        let crc = le32(&b, 14);
        let csize = le32(&b, 18);
        let usize = le32(&b, 22);
        let name_len = usize::from(le16(&b, 26));
        let raw_name = b[LOCAL_LEN..LOCAL_LEN + name_len].to_vec();
        let extra = &b[LOCAL_LEN + name_len..];
        if name_len > limits::MAX_ZIP_NAME {
            return Err(ZipError::NameTooLong {
                offset: at,
                len: name_len,
                limit: limits::MAX_ZIP_NAME,
            });
        }
        let corrupt = |member: Option<&str>, reason: String| ZipError::Corrupt {
            offset: at,
            member: member.map(str::to_owned),
            reason,
        };
        let name = decode_name(&raw_name, flags).map_err(|why| corrupt(None, why))?;
        let unsupported = |what: String| ZipError::Unsupported {
            offset: at,
            member: Some(name.clone()),
            what,
        };
        if flags & (ENCRYPTED | STRONG_ENCRYPTION | MASKED_HEADERS) != 0 || method == 99 {
            return Err(unsupported(
                "encrypted zip member, which ovaio does not read; give the package unencrypted"
                    .into(),
            ));
        }
        if flags & PATCHED != 0 {
            return Err(unsupported(
                "zip member of compressed patched data (general purpose flag bit 5), which ovaio does not read".into(),
            ));
        }
        let method = match method {
            0 => Method::Stored,
            8 => Method::Deflated,
            m => {
                return Err(unsupported(format!(
                    "zip member compressed with method {m} ({}), which ovaio does not read: only stored (0) and deflated (8) members are",
                    method_name(m)
                )));
            }
        };
        check_extra(extra, &name).map_err(|e| match e {
            ExtraProblem::Zip64 => unsupported(
                "zip member with a zip64 extra field: zip64 archives are not read by ovaio"
                    .into(),
            ),
            ExtraProblem::Encrypted => unsupported(
                "encrypted zip member (AES), which ovaio does not read; give the package unencrypted"
                    .into(),
            ),
            ExtraProblem::Bad(why) => corrupt(Some(&name), why),
        })?;
        if csize == ZIP64_MARK || usize == ZIP64_MARK {
            return Err(unsupported(
                "zip member whose sizes are in a zip64 record: zip64 archives are not read by ovaio"
                    .into(),
            ));
        }
        let descriptor = flags & DATA_DESCRIPTOR != 0;
        if descriptor && method == Method::Stored {
            return Err(ZipError::StoredWithDescriptor {
                offset: at,
                member: name,
            });
        }
        if !descriptor && method == Method::Stored && csize != usize {
            return Err(corrupt(
                Some(&name),
                format!(
                    "stored zip member whose compressed size ({csize}) differs from its size ({usize})"
                ),
            ));
        }
        let directory = name.ends_with('/');
        if directory && !descriptor && usize != 0 {
            return Err(corrupt(
                Some(&name),
                format!("zip directory member holding {usize} bytes of data"),
            ));
        }
        let data_offset = self.pos;
        self.current = Some(Current {
            name: name.clone(),
            raw_name,
            flags,
            method: le16(&b, 8),
            directory,
            header_offset: at,
            data_offset,
            crc,
            csize,
            usize,
            stored_crc: Crc::new(),
            stored_len: 0,
            inflate: None,
        });
        self.state = match method {
            Method::Stored => State::Stored {
                remaining: u64::from(csize),
            },
            Method::Deflated => State::Deflated {
                remaining: (!descriptor).then_some(u64::from(csize)),
            },
        };
        Ok(MemberHeader {
            name,
            size: (!descriptor).then_some(u64::from(usize)),
            method,
            directory,
            header_offset: at,
            data_offset,
        })
    }

    /// The deflate stream of the current member ended.
    pub(super) fn after_deflate(&mut self) -> Result<(), ZipError> {
        let at = self.pos;
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "deflate data outside a member"));
        };
        if let State::Deflated {
            remaining: Some(r @ 1..),
        } = self.state
        {
            return Err(self.corrupt(
                at,
                format!(
                    "the deflate data ends {r} bytes before the member's compressed size of {} bytes",
                    c.csize
                ),
            ));
        }
        if c.flags & DATA_DESCRIPTOR == 0 {
            return self.end_member();
        }
        // With a descriptor the local header's fields are meant to be
        // zero; any that are not must still tell the truth.
        let (crc, csize, usize) = c.actual();
        let lies = (c.crc != 0 && c.crc != crc)
            || (c.csize != 0 && u64::from(c.csize) != csize)
            || (c.usize != 0 && u64::from(c.usize) != usize);
        if lies {
            return Err(self.corrupt(
                c.header_offset,
                "the local header's CRC-32 or sizes differ from the member's data",
            ));
        }
        self.buf.clear();
        self.state = State::Descriptor;
        Ok(())
    }

    /// A data descriptor of 12 bytes, or 16 starting with its signature,
    /// is in `buf`: it must give what was read.
    pub(super) fn descriptor(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "data descriptor outside a member"));
        };
        let (crc, csize, usize) = c.actual();
        let says = |b: &[u8]| {
            le32(b, 0) == crc && u64::from(le32(b, 4)) == csize && u64::from(le32(b, 8)) == usize
        };
        let b = std::mem::take(&mut self.buf);
        if b.len() == 16 && says(&b[4..]) {
            // With its signature.
        } else if says(&b[..12]) {
            // Without: the bytes after it start the next record.
            self.buf = b[12..].to_vec();
        } else {
            return Err(self.corrupt(
                at,
                format!(
                    "the data descriptor does not match the member's data (CRC-32 {crc:08x}, {csize} compressed bytes, {usize} bytes)"
                ),
            ));
        }
        self.end_member()
    }

    /// The current member's data is complete: checks it against its
    /// local header (or descriptor, already checked) and makes `End` due.
    pub(super) fn end_member(&mut self) -> Result<(), ZipError> {
        let at = self.pos;
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "member end outside a member"));
        };
        let (crc, csize, usize) = c.actual();
        if c.flags & DATA_DESCRIPTOR == 0 {
            if crc != c.crc {
                return Err(self.corrupt(
                    c.data_offset,
                    format!(
                        "CRC-32 mismatch: the local header says {:08x}, the data is {crc:08x}",
                        c.crc
                    ),
                ));
            }
            if csize != u64::from(c.csize) || usize != u64::from(c.usize) {
                return Err(self.corrupt(
                    c.data_offset,
                    format!(
                        "the member's data is {csize} compressed and {usize} uncompressed bytes, its local header says {} and {}",
                        c.csize, c.usize
                    ),
                ));
            }
        }
        if c.directory && usize != 0 {
            return Err(self.corrupt(
                c.data_offset,
                format!("zip directory member holding {usize} bytes of data"),
            ));
        }
        self.state = State::EndDue;
        Ok(())
    }

    /// A whole central directory record is in `buf`: it must describe
    /// the member the stream held at its place.
    pub(super) fn central(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        self.state = State::Signature;
        let k = self.central_seen;
        self.central_seen += 1;
        let Some(seen) = self.members.get(k) else {
            return Err(ZipError::Corrupt {
                offset: at,
                member: None,
                reason: format!(
                    "the central directory lists more members than the {} the archive holds",
                    self.members.len()
                ),
            });
        };
        let name_len = usize::from(le16(&b, 28));
        let extra_len = usize::from(le16(&b, 30));
        let raw_name = &b[CENTRAL_LEN..CENTRAL_LEN + name_len];
        let extra = &b[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
        let member = Some(String::from_utf8_lossy(&seen.name).into_owned());
        let (csize, usize, offset) = (le32(&b, 20), le32(&b, 24), le32(&b, 42));
        if [csize, usize, offset].contains(&ZIP64_MARK) {
            return Err(ZipError::Unsupported {
                offset: at,
                member,
                what: "central directory record with zip64 sizes or offset: zip64 archives are not read by ovaio".into(),
            });
        }
        if le16(&b, 34) != 0 {
            return Err(ZipError::Unsupported {
                offset: at,
                member,
                what: "zip archive split over several disks, which ovaio does not read".into(),
            });
        }
        let flags = le16(&b, 8);
        let differs = if u64::from(offset) != seen.offset {
            Some("local header offset")
        } else if raw_name != seen.name.as_slice() {
            Some("name")
        } else if !seen.name.is_ascii() && (flags ^ seen.flags) & UTF8 != 0 {
            Some("name encoding (flag bit 11)")
        } else if le16(&b, 10) != seen.method {
            Some("compression method")
        } else if le32(&b, 16) != seen.crc {
            Some("CRC-32")
        } else if u64::from(csize) != seen.csize {
            Some("compressed size")
        } else if u64::from(usize) != seen.usize {
            Some("size")
        } else {
            None
        };
        if let Some(field) = differs {
            return Err(ZipError::Corrupt {
                offset: at,
                member,
                reason: format!(
                    "the central directory gives another {field} than the member's local header and data: readers that go by the directory would see another archive"
                ),
            });
        }
        let name = String::from_utf8_lossy(raw_name);
        check_extra_central(extra, &name).map_err(|why| ZipError::Corrupt {
            offset: at,
            member: member.clone(),
            reason: why,
        })?;
        Ok(())
    }

    /// A whole end of central directory record is in `buf`.
    pub(super) fn end_record(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        let corrupt = |reason: String| ZipError::Corrupt {
            offset: at,
            member: None,
            reason,
        };
        if le16(&b, 4) != 0 || le16(&b, 6) != 0 {
            return Err(ZipError::Unsupported {
                offset: at,
                member: None,
                what: "zip archive split over several disks, which ovaio does not read".into(),
            });
        }
        let (on_disk, entries) = (le16(&b, 8), le16(&b, 10));
        let (cd_size, cd_offset) = (le32(&b, 12), le32(&b, 16));
        if entries == u16::MAX || cd_size == ZIP64_MARK || cd_offset == ZIP64_MARK {
            return Err(ZipError::Unsupported {
                offset: at,
                member: None,
                what: "zip64 end of central directory: zip64 archives are not read by ovaio".into(),
            });
        }
        let held = self.members.len();
        if usize::from(entries) != held || on_disk != entries || self.central_seen != held {
            return Err(corrupt(format!(
                "the archive holds {held} members, its central directory lists {} and its end record counts {entries}: readers that go by the directory would see another archive",
                self.central_seen
            )));
        }
        let start = self.central_start.unwrap_or(at);
        if u64::from(cd_offset) != start || u64::from(cd_size) != at - start {
            return Err(corrupt(format!(
                "the end record places the central directory at byte {cd_offset} ({cd_size} bytes), but it is at byte {start} ({} bytes)",
                at - start
            )));
        }
        let comment = u64::from(le16(&b, 20));
        self.state = if comment == 0 {
            State::EofDue
        } else {
            State::Comment { remaining: comment }
        };
        Ok(())
    }
}
