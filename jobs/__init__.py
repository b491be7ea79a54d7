"""The command-line jobs: link (`onegen-link`), build_index (`onegen-index`) and train (`onegen-train`)."""
