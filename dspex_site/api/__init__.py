"""What every API view shares: the error body and the one domain-error mapping (`errors`),
size-limited parsers and upload decoding (`parsers`), strict bodies and referenced rows
(`serializers`), and the OpenAPI schema's error responses (`schema`)."""
