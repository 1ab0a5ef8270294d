"""The service's wire formats: one module per format, owning its schema, encoder and decoder.

Every writer and every reader of a format uses its module, so a format is defined once:

- `wire.assignment`: a classified point on the output topic.
- `wire.dead_letter`: a refused input record on the dead-letter topic.
- `wire.params_record`: a model on the params and history topics (key, value, headers).
- `wire.event`: a lifecycle, drift or shadow event on the events topic.
- `wire.shadow_report`: a worker's shadow totals, carried in a `shadow` event.
- `wire.common`: what the formats share (the input's coordinates, a cut key, the JSON encoder).

Pure: no Faust, aiokafka or asyncio, and nothing of the project but `mixture` (a params record
is a `mixture.params.ModelParams`). Sending and receiving stay with the Kafka code
(`kafka_common`, `stream_app`, `trainer`).
"""
