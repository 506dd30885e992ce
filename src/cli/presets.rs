//! `kiln presets` and `kiln init`: the configs built into kiln, listed and written out.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::{Preset, RunSpec, PRESETS};

/// `kiln presets`: one line per preset.
pub fn list() -> Result<()> {
    let mut table = super::table::Table::new(&["preset", "model", "tokenizer", "what it is"]);
    for preset in PRESETS {
        let spec = RunSpec::from_toml(preset.text, &format!("preset {}", preset.name))?;
        let model = &spec.model;
        let shape = format!(
            "{} · {} layers · d_model {} · context {}",
            model.kind(),
            model.n_layers(),
            model.d_model(),
            model.block_size()
        );
        table.row(vec![
            preset.name.to_string(),
            shape,
            spec.data.tokenizer.to_string(),
            preset.summary().to_string(),
        ]);
    }
    table.print();
    println!(
        "\nTrain one with `kiln train --preset NAME` (add --data FILE for your own text); \
         `kiln init --preset NAME` writes it out to edit."
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The preset to start from (`kiln presets` lists them).
    #[arg(long, value_name = "NAME", default_value = crate::config::DEFAULT_FOR_DATA)]
    preset: String,
    /// The file to write; `<preset>.toml` in this folder by default. Never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// `kiln init`: writes a preset out as a config file to edit.
pub fn init(args: InitArgs) -> Result<()> {
    let preset = Preset::find(&args.preset)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(format!("{}.toml", preset.name)));
    if out.exists() {
        anyhow::bail!(
            "{} already exists; kiln does not overwrite it (choose another --out)",
            out.display()
        );
    }
    crate::files::write_atomic(&out, preset.text.as_bytes())?;
    println!(
        "wrote {} (preset {}); edit it, then: kiln train --config {}",
        out.display(),
        preset.name,
        out.display()
    );
    Ok(())
}
