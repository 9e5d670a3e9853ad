<?php
// PHP's SoapClient against the msjx-gateway SOAP façade over mutual TLS (tests/test_soap_php.py runs it).
// Reads each service's WSDL, calls one operation per service with a granted purpose, then one with a purpose
// the caller holds no grant for; prints what it got as JSON.
// Usage: php soap_client.php BASE_URL CERT KEY CA PURPOSE UNGRANTED USCC
[$script, $base, $cert, $key, $ca, $purpose, $ungranted, $uscc] = $argv;

$context = stream_context_create(['ssl' => [
    'local_cert' => $cert,
    'local_pk' => $key,
    'cafile' => $ca,
    'verify_peer' => true,
    'verify_peer_name' => true,
]]);

function client(string $wsdl, $context, int $version): SoapClient {
    return new SoapClient($wsdl, [
        'stream_context' => $context,
        'soap_version' => $version,
        'cache_wsdl' => WSDL_CACHE_NONE,
        'features' => SOAP_SINGLE_ELEMENT_ARRAYS,
        'exceptions' => true,
        'trace' => true,
    ]);
}

function call(SoapClient $client, string $operation, string $purpose, array $params): array {
    try {
        $answer = $client->__soapCall($operation, [['purpose' => $purpose, 'params' => $params]]);
        return ['data' => $answer->data, 'meta' => $answer->meta];
    } catch (SoapFault $fault) {
        return [
            'fault' => $fault->faultcode,
            'reason' => $fault->faultstring,
            'code' => $fault->detail->problem->code ?? null,
        ];
    }
}

$credit = client("$base/soap/credit?wsdl", $context, SOAP_1_1);
$tax = client("$base/soap/golden-tax?wsdl", $context, SOAP_1_2);
echo json_encode([
    'functions' => $credit->__getFunctions(),
    'credit' => call($credit, 'dishonest-debtor', $purpose, ['uscc' => $uscc]),
    'tax' => call($tax, 'tax-registration', $purpose, ['uscc' => $uscc]),
    'refused' => call($credit, 'dishonest-debtor', $ungranted, ['uscc' => $uscc]),
    'refused12' => call($tax, 'tax-registration', $ungranted, ['uscc' => $uscc]),
], JSON_PRETTY_PRINT | JSON_UNESCAPED_UNICODE), "\n";
