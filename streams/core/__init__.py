"""The pure correlation core: no Kafka, no Faust, no HTTP, no wall clock."""
