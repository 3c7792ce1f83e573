//! The structured view of a `.vmx`: what a backup needs to know about the VM.
//!
//! Read from a [`Document`] without changing it. Absent keys are `None`; values that should be
//! numbers but are not are `None` too (the raw value is always in the document). Key names and
//! their meanings: `vmdk-vmx-formats.md` §3.2 (libvirt `src/vmx/vmx.c`, virt-v2v).

use crate::document::Document;
use serde::Serialize;
use std::collections::BTreeMap;

/// The buses a disk or CD-ROM can sit on, in the order they are listed.
pub const BUSES: [&str; 4] = ["ide", "sata", "scsi", "nvme"];

/// A VM's configuration as a backup sees it.
#[derive(Clone, Debug, Serialize)]
pub struct VmConfig {
    pub display_name: Option<String>,
    pub guest_os: Option<String>,
    /// `config.version`.
    pub config_version: Option<String>,
    /// `virtualHW.version`.
    pub hardware_version: Option<String>,
    /// `memsize`, in MiB.
    pub memory_mb: Option<u64>,
    /// `numvcpus`; VMware's default when absent is 1.
    pub num_vcpus: Option<u64>,
    /// `firmware` (`efi`, `bios`); absent means BIOS.
    pub firmware: Option<String>,
    pub uuid: Uuids,
    pub disks: Vec<DiskDevice>,
    pub cdroms: Vec<Cdrom>,
    pub nics: Vec<Nic>,
    /// `nvram`: the BIOS/EFI variables file.
    pub nvram: Option<String>,
    /// `checkpoint.vmState`: the suspend-state file; `None` when empty (not suspended).
    pub suspend_state: Option<String>,
    /// `extendedConfigFile` (the `.vmxf`).
    pub extended_config_file: Option<String>,
    /// `sched.swap.derivedName` (the `.vswp`, often an absolute `/vmfs/volumes/...` path).
    pub swap_file: Option<String>,
    /// `encryption.keySafe` or `encryption.data` is present: the real settings are encrypted.
    pub encrypted: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Uuids {
    /// `uuid.bios`.
    pub bios: Option<String>,
    /// `uuid.location`.
    pub location: Option<String>,
    /// `vc.uuid` (vCenter's instance UUID).
    pub vc: Option<String>,
}

/// A virtual disk: a device with a `fileName` whose `deviceType` is not a CD-ROM.
#[derive(Clone, Debug, Serialize)]
pub struct DiskDevice {
    /// `scsi0:1`, as the keys spell the bus.
    pub node: String,
    /// `ide`, `sata`, `scsi` or `nvme`.
    pub bus: String,
    pub controller: u32,
    pub unit: u32,
    /// `fileName`: the current leaf of the disk's snapshot chain.
    pub file_name: String,
    /// `deviceType` (`scsi-hardDisk`, `ata-hardDisk`, ...), if written.
    pub device_type: Option<String>,
    /// `mode`: `persistent` (the default when absent), `independent-persistent`,
    /// `independent-nonpersistent`, `undoable`, `nonpersistent`.
    pub mode: Option<String>,
    /// The mode starts with `independent`: snapshots leave this disk out.
    pub independent: bool,
    /// The device and its controller are not switched off by `present = "FALSE"`.
    pub present: bool,
    /// The controller's `virtualDev` (`lsilogic`, `pvscsi`, ...), if written.
    pub controller_type: Option<String>,
}

/// A CD-ROM drive: a device whose `deviceType` contains `cdrom`.
#[derive(Clone, Debug, Serialize)]
pub struct Cdrom {
    pub node: String,
    pub bus: String,
    pub controller: u32,
    pub unit: u32,
    /// The ISO image or host device, if any.
    pub file_name: Option<String>,
    pub device_type: String,
    pub present: bool,
    /// `startConnected`, if written.
    pub start_connected: Option<bool>,
}

/// A network adapter (`ethernetN`).
#[derive(Clone, Debug, Serialize)]
pub struct Nic {
    pub index: u32,
    pub present: bool,
    /// `virtualDev` (`e1000`, `vmxnet3`, ...).
    pub virtual_dev: Option<String>,
    /// `addressType`: `generated`, `static` or `vpx`.
    pub address_type: Option<String>,
    /// The MAC in use: `address` for static addresses, `generatedAddress` otherwise.
    pub mac: Option<String>,
    pub network_name: Option<String>,
    pub connection_type: Option<String>,
}

/// VMware booleans: `TRUE`/`FALSE` in any case; `1`/`0` and `yes`/`no` also occur.
pub fn parse_bool(v: &str) -> Option<bool> {
    let v = v.trim();
    if ["true", "yes", "1"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
    {
        Some(true)
    } else if ["false", "no", "0"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
    {
        Some(false)
    } else {
        None
    }
}

fn parse_u64(v: Option<&str>) -> Option<u64> {
    v.and_then(|v| v.trim().parse().ok())
}

fn not_switched_off(doc: &Document, key: &str) -> bool {
    doc.get(key).and_then(parse_bool) != Some(false)
}

/// `scsi0:1.fileName` → (bus index in [`BUSES`], "scsi", 0, 1), for any case.
fn device_node(key: &str) -> Option<(usize, &'static str, u32, u32)> {
    let lower = key.to_ascii_lowercase();
    let (bi, bus) = BUSES
        .iter()
        .enumerate()
        .find(|(_, b)| lower.starts_with(**b))?;
    let rest = &lower[bus.len()..];
    let (node, _attr) = rest.split_once('.')?;
    let (c, u) = node.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(c) || !digits(u) {
        return None;
    }
    Some((bi, bus, c.parse().ok()?, u.parse().ok()?))
}

/// `ethernet3.address` → 3.
fn nic_index(key: &str) -> Option<u32> {
    let lower = key.to_ascii_lowercase();
    let rest = lower.strip_prefix("ethernet")?;
    let (n, _) = rest.split_once('.')?;
    if n.is_empty() || n.len() > 4 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl VmConfig {
    pub fn from_document(doc: &Document) -> VmConfig {
        let s = |k: &str| doc.get(k).map(str::to_string);
        let mut nodes = BTreeMap::new();
        let mut nics = BTreeMap::new();
        for (_, key, _) in doc.pairs() {
            if let Some((bi, bus, c, u)) = device_node(key) {
                nodes.insert((bi, c, u), bus);
            } else if let Some(n) = nic_index(key) {
                nics.insert(n, ());
            }
        }
        let mut disks = Vec::new();
        let mut cdroms = Vec::new();
        for ((_, c, u), bus) in nodes {
            let node = format!("{bus}{c}:{u}");
            let attr = |a: &str| doc.get(&format!("{node}.{a}")).map(str::to_string);
            let controller = format!("{bus}{c}");
            let present = not_switched_off(doc, &format!("{node}.present"))
                && not_switched_off(doc, &format!("{controller}.present"));
            let device_type = attr("deviceType");
            let file_name = attr("fileName").filter(|f| !f.is_empty());
            if device_type
                .as_deref()
                .is_some_and(|t| t.to_ascii_lowercase().contains("cdrom"))
            {
                let start_connected = attr("startConnected").as_deref().and_then(parse_bool);
                cdroms.push(Cdrom {
                    node,
                    bus: bus.to_string(),
                    controller: c,
                    unit: u,
                    file_name,
                    device_type: device_type.unwrap_or_default(),
                    present,
                    start_connected,
                });
            } else if let Some(file_name) = file_name {
                let mode = attr("mode");
                disks.push(DiskDevice {
                    independent: mode
                        .as_deref()
                        .is_some_and(|m| m.to_ascii_lowercase().starts_with("independent")),
                    node,
                    bus: bus.to_string(),
                    controller: c,
                    unit: u,
                    file_name,
                    device_type,
                    mode,
                    present,
                    controller_type: doc
                        .get(&format!("{controller}.virtualDev"))
                        .map(str::to_string),
                });
            }
        }
        let nics = nics
            .into_keys()
            .map(|n| {
                let attr = |a: &str| doc.get(&format!("ethernet{n}.{a}")).map(str::to_string);
                let address_type = attr("addressType");
                let mac = match address_type.as_deref().map(str::to_ascii_lowercase) {
                    Some(t) if t == "static" => attr("address"),
                    _ => attr("generatedAddress").or_else(|| attr("address")),
                };
                Nic {
                    index: n,
                    present: not_switched_off(doc, &format!("ethernet{n}.present")),
                    virtual_dev: attr("virtualDev"),
                    address_type,
                    mac,
                    network_name: attr("networkName"),
                    connection_type: attr("connectionType"),
                }
            })
            .collect();
        VmConfig {
            display_name: s("displayName"),
            guest_os: s("guestOS"),
            config_version: s("config.version"),
            hardware_version: s("virtualHW.version"),
            memory_mb: parse_u64(doc.get("memsize")),
            num_vcpus: parse_u64(doc.get("numvcpus")),
            firmware: s("firmware"),
            uuid: Uuids {
                bios: s("uuid.bios"),
                location: s("uuid.location"),
                vc: s("vc.uuid"),
            },
            disks,
            cdroms,
            nics,
            nvram: s("nvram").filter(|v| !v.is_empty()),
            suspend_state: s("checkpoint.vmState").filter(|v| !v.is_empty()),
            extended_config_file: s("extendedConfigFile").filter(|v| !v.is_empty()),
            swap_file: s("sched.swap.derivedName").filter(|v| !v.is_empty()),
            encrypted: doc.get("encryption.keySafe").is_some()
                || doc.get("encryption.data").is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn view(s: &str) -> VmConfig {
        VmConfig::from_document(&Document::parse(Path::new("t.vmx"), s.as_bytes()).unwrap())
    }

    #[test]
    fn devices_by_bus_and_node() {
        let v = view(
            "scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
             scsi0:1.fileName = \"b.vmdk\"\nscsi0:1.mode = \"independent-persistent\"\n\
             SCSI0:0.FILENAME = \"a.vmdk\"\nscsi0:0.present = \"true\"\n\
             scsi1.present = \"FALSE\"\nscsi1:0.fileName = \"off.vmdk\"\n\
             ide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"x.iso\"\n\
             ide1:0.startConnected = \"FALSE\"\nide0:0.fileName = \"ide.vmdk\"\n\
             nvme0:0.fileName = \"n.vmdk\"\nsata0:0.deviceType = \"atapi-cdrom\"\n\
             scsi0:2.present = \"FALSE\"\nscsi0:2.fileName = \"gone.vmdk\"\n\
             scsix:0.fileName = \"not-a-node.vmdk\"\n",
        );
        let nodes: Vec<_> = v.disks.iter().map(|d| d.node.as_str()).collect();
        assert_eq!(
            nodes,
            ["ide0:0", "scsi0:0", "scsi0:1", "scsi0:2", "scsi1:0", "nvme0:0"]
        );
        assert_eq!(v.disks[1].file_name, "a.vmdk");
        assert_eq!(v.disks[1].controller_type.as_deref(), Some("pvscsi"));
        assert!(v.disks[2].independent);
        assert!(!v.disks[1].independent);
        assert!(v.disks[1].present && v.disks[0].present);
        assert!(!v.disks[3].present, "device switched off");
        assert!(!v.disks[4].present, "controller switched off");
        assert_eq!(v.cdroms.len(), 2);
        assert_eq!(v.cdroms[0].node, "ide1:0");
        assert_eq!(v.cdroms[0].start_connected, Some(false));
        assert_eq!(v.cdroms[1].file_name, None);
    }

    #[test]
    fn nics_pick_the_mac_by_address_type() {
        let v = view(
            "ethernet0.addressType = \"generated\"\nethernet0.generatedAddress = \"00:0c:29:aa:bb:cc\"\n\
             ethernet1.addressType = \"static\"\nethernet1.address = \"00:50:56:01:02:03\"\n\
             ethernet1.generatedAddress = \"00:0c:29:00:00:00\"\nethernet1.present = \"FALSE\"\n",
        );
        assert_eq!(v.nics.len(), 2);
        assert_eq!(v.nics[0].mac.as_deref(), Some("00:0c:29:aa:bb:cc"));
        assert_eq!(v.nics[1].mac.as_deref(), Some("00:50:56:01:02:03"));
        assert!(v.nics[0].present && !v.nics[1].present);
    }

    #[test]
    fn scalars() {
        let v = view(
            "memsize = \"4096\"\nnumvcpus = \"x\"\ncheckpoint.vmState = \"\"\n\
             checkpoint.vmState.readOnly = \"FALSE\"\nencryption.keySafe = \"vmware:key\"\n",
        );
        assert_eq!(v.memory_mb, Some(4096));
        assert_eq!(v.num_vcpus, None);
        assert_eq!(v.suspend_state, None);
        assert!(v.encrypted);
    }
}
