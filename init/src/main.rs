//! cairn-init: the initrd stage and PID 1 of the Cairn appliance. See the crate README.
fn main() {
    cairn_init::entry();
}
