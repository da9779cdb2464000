// OHIF's configuration, one file for every OHIF of the project: docker-compose's ohif service and the viewer that
// tools/ohif.py serves for the demo and the browser test (tests/test_ohif.py), which checks it.  Orthanc's DICOMweb
// on the viewer's own origin under /dicom-web; no investigational-use dialog; SRs loaded as tracked measurements
// without asking (disableConfirmationPrompts).
window.config = {
  "routerBasename": "/",
  "extensions": [],
  "modes": [],
  "showStudyList": true,
  "maxNumberOfWebWorkers": 2,
  "showWarningMessageForCrossOrigin": false,
  "showCPUFallbackMessage": false,
  "showLoadingIndicator": true,
  "disableConfirmationPrompts": true,
  "investigationalUseDialog": {
    "option": "never"
  },
  "defaultDataSourceName": "orthanc",
  "dataSources": [
    {
      "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
      "sourceName": "orthanc",
      "configuration": {
        "friendlyName": "Orthanc",
        "name": "orthanc",
        "qidoRoot": "/dicom-web",
        "wadoRoot": "/dicom-web",
        "wadoUriRoot": "/dicom-web",
        "qidoSupportsIncludeField": false,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": true,
        "supportsFuzzyMatching": false,
        "supportsWildcard": true,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {
          "enabled": true,
          "relativeResolution": "studies"
        },
        "omitQuotationForMultipartRequest": true
      }
    }
  ]
};
