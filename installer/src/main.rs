//! cairn-install: lays the system image onto a disk (USB or PXE boot). Not built yet: the
//! installer issue fills this in; for now it only says so, and fails, so nothing mistakes it
//! for a working installer.
fn main() {
    eprintln!("cairn-install: the installer is not implemented yet");
    std::process::exit(2);
}
