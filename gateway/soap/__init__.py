"""The SOAP façade: every service the gateway offers, also as a generated WSDL 1.1 endpoint for legacy callers."""
