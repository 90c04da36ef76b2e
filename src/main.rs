//! The `pgfork` binary (also installed as `pg-fork`): all the work is in the library.

fn main() {
    std::process::exit(pgfork::cli::main());
}
