//! Writes the CRD YAML of every edgevisor kind, one file per kind.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate the edgevisor CustomResourceDefinitions from the Rust API types.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Directory to write `<plural>.yaml` files into.
    #[arg(long, default_value = "charts/edgevisor/crds")]
    out: PathBuf,
    /// Print all CRDs to stdout as one multi-document YAML stream instead of writing files.
    #[arg(long)]
    stdout: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (file, crd) in edgevisor_crds::crds() {
        let yaml = edgevisor_crds::to_yaml(&crd)?;
        if args.stdout {
            println!("---\n{yaml}");
            continue;
        }
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let path = args.out.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
