"""What travels over Kafka: one module per record format, each owning its schema, encoder and
decoder, used by every writer and reader of that format.

Pure: no Kafka client, Faust or asyncio (the Kafka side of each topic lives in `kafka_common`
and the processes). It may import `mixture` (the model's own JSON) and nothing else of the
project.
"""
