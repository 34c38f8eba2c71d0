//! Prints the Switchboard CRDs as YAML, writes one file per CRD with `--write DIR`, or prints
//! the Markdown field reference with `--markdown`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let files = match switchboard_crds::crd_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: cannot serialise the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            for (i, (_, yaml)) in files.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{yaml}");
            }
            ExitCode::SUCCESS
        }
        [flag] if flag == "--markdown" => {
            print!("{}", switchboard_crds::reference::markdown());
            ExitCode::SUCCESS
        }
        [flag, dir] if flag == "--write" => {
            for (name, yaml) in &files {
                let path = std::path::Path::new(dir).join(name);
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: crdgen [--write DIR | --markdown]");
            ExitCode::from(2)
        }
    }
}
