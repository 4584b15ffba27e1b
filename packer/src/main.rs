//! `qbackup-pack`: the privileged half (create, restore). Built in a later issue.
fn main() {
    eprintln!("qbackup-pack: not built yet; see the packer issue");
    std::process::exit(2);
}
