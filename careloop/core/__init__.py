"""The foundation every part stands on: settings, schema, store, registry, migrations, hardware."""
