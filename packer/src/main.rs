//! `qbackup-pack`: thin shell around [`qbackup_pack::run`]; exit codes in `cli.rs`.

use qbackup_pack::cli::{Cli, Command};

#[global_allocator]
static ALLOC: qbackup_bigalloc::BigAlloc = qbackup_bigalloc::BigAlloc;

fn main() {
    qbackup_bigalloc::configure();
    let cli: Cli = qbackup_console::parse_args();
    let result = match cli.command {
        Command::Create(c) => qbackup_pack::run(c),
        Command::Restore(r) => qbackup_pack::restore::run(r),
    };
    let code = match result {
        Ok(()) => 0,
        // JSON mode (--progress-json): the failure is one `failed` event with its class.
        Err(e) if qbackup_console::json_stderr() => {
            qbackup_console::failed(e.class_name(), e.exit_code(), &e.to_string());
            e.exit_code()
        }
        Err(e) => {
            qbackup_pack::say!("qbackup-pack: {e}");
            e.exit_code()
        }
    };
    qbackup_destination::cancel::exit(code);
}
