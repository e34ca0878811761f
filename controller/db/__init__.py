"""SQL adapter: models, migrations, engine set-up, and the repositories that read and write them."""
