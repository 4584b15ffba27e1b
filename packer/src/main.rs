//! `qbackup-pack`: thin shell around [`qbackup_pack::run`]; exit codes in `cli.rs`.

use clap::Parser;
use qbackup_pack::cli::{Cli, Command};

#[global_allocator]
static ALLOC: qbackup_pack::alloc::HugeAlloc = qbackup_pack::alloc::HugeAlloc;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Create(c) => match qbackup_pack::run(c) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("qbackup-pack: {e}");
                e.exit_code()
            }
        },
    };
    std::process::exit(code);
}
