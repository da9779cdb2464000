// One study's knee-node results in OHIF, driven by playwright-core in Debian's Chromium (tests/test_ohif.py).
//
// node ohif.cjs SPEC.json: SPEC has viewer (the study's viewer URL), series ({SC, SR, SEG: SeriesInstanceUID}),
// knees (how many), out (a folder), chromium (its path) and shownTours.  Shows the SC, then the SR (OHIF hydrates
// it into tracked measurements; their panel opened), then the SEG (its segments and display settings in their
// panel) with its overlay on and, switched by the panel's visibility toggle, off; a screenshot of each step in
// `out`, and out/result.json: the tracked measurements, the segments' labels, the knees' boxes on the canvas and
// what the viewport showed.  Every step waits on the viewer's state or events, never on a fixed delay.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(process.env.BROWSER_DIR, 'node_modules', 'playwright-core'));

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const STEP_TIMEOUT = 60000;
const MEASUREMENT_PANEL = '@ohif/extension-measurement-tracking.panelModule.trackedMeasurements';
const SEGMENTATION_PANEL = '@ohif/extension-cornerstone.panelModule.panelSegmentation';

async function main() {
  const browser = await chromium.launch({
    executablePath: spec.chromium,
    args: ['--enable-unsafe-swiftshader', '--use-angle=swiftshader', '--no-sandbox'],
  });
  const result = { console: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(STEP_TIMEOUT);
    page.on('console', message => {
      if (['error', 'warning'].includes(message.type())) result.console.push(message.text().slice(0, 300));
    });
    // OHIF's first-run tour, dismissed for good before the viewer starts.
    await page.addInitScript(tours => localStorage.setItem('shownTours', JSON.stringify(tours)), spec.shownTours);
    // The cornerstone viewport showing an image (one viewport in this layout).
    await page.addInitScript(() => {
      window.activeViewport = () => window.cornerstone?.getRenderingEngines?.()
        ?.flatMap(engine => engine.getViewports()).find(viewport => viewport.getCurrentImageId?.());
    });
    await page.goto(spec.viewer);
    await page.waitForFunction(count => window.services?.displaySetService?.getActiveDisplaySets().length >= count,
                               Object.keys(spec.series).length + 1);

    result.sc = await show(page, spec.series.SC);
    await page.screenshot({ path: path.join(spec.out, '1-sc.png') });

    await show(page, spec.series.SR, false);
    await page.waitForFunction(count => window.services.measurementService.getMeasurements().length >= count,
                               spec.knees);
    await rendered(page);
    result.measurements = await page.evaluate(() => window.services.measurementService.getMeasurements()
      .map(m => ({ label: m.label, toolName: m.toolName, referencedImageId: m.referencedImageId })));
    // The measurement panel, as a radiologist opens it: each knee's label listed.
    await page.evaluate(panel => window.services.panelService.activatePanel(panel, true), MEASUREMENT_PANEL);
    for (const { label } of result.measurements) {
      await page.getByText(label, { exact: true }).first().waitFor();
    }
    await page.evaluate(() => window.activeViewport().resetCamera());  // the panel took width: the image fitted again
    await rendered(page);
    await page.screenshot({ path: path.join(spec.out, '2-sr.png') });

    // The SEG: shown over the radiograph (failing fast when OHIF cannot load it), its segments listed in the
    // segmentation panel, then its overlay switched off.
    const failed = new Promise((resolve, reject) => page.on('console', message => {
      if (message.text().includes('failed to load')) reject(new Error(`OHIF: ${message.text()}`));
    }));
    failed.catch(() => {});  // a failure after the SEG loaded is not this step's (nor an unhandled rejection)
    await show(page, spec.series.SEG, false);
    await Promise.race([failed, page.waitForFunction(() => {
      const { segmentationService, viewportGridService } = window.services;
      const viewportId = viewportGridService.getActiveViewportId();
      return segmentationService.getSegmentationRepresentations(viewportId).length > 0;
    })]);
    await page.evaluate(panel => window.services.panelService.activatePanel(panel, true), SEGMENTATION_PANEL);
    result.segments = await page.evaluate(() => {
      const [segmentation] = window.services.segmentationService.getSegmentations();
      return Object.values(segmentation.segments).filter(Boolean).map(segment => segment.label);
    });
    for (const label of result.segments) {
      await page.getByText(label, { exact: true }).first().waitFor();
    }
    // Its display settings opened, as a radiologist adjusting the overlay's opacity would.
    await page.locator('[data-cy^="segmentation-config-toggle"]').first().click();
    await page.locator('[data-cy^="segmentation-config-opacity"]').first().waitFor();
    await page.evaluate(() => window.activeViewport().resetCamera());
    await rendered(page);
    await page.screenshot({ path: path.join(spec.out, '3-seg-on.png') });
    result.seg = { on: await viewportPixels(page) };
    // Where the knees' boxes (the SR's measurements) lie on the canvas, to check that the overlay sits on them.
    result.seg.boxes = await page.evaluate(() => window.services.measurementService.getMeasurements()
      .map(m => m.points.map(point => window.activeViewport().worldToCanvas(point))));
    // The overlay switched off with the panel's visibility toggle (the eye above the segments).
    await page.locator('[data-cy^="all-segments-visibility-toggle"]').first().click();
    await page.waitForFunction(() => {
      const { segmentationService, viewportGridService } = window.services;
      const viewportId = viewportGridService.getActiveViewportId();
      return segmentationService.getSegmentationRepresentations(viewportId).every(r => r.visible === false);
    });
    await rendered(page);
    await page.screenshot({ path: path.join(spec.out, '4-seg-off.png') });
    result.seg.off = await viewportPixels(page);
  } finally {
    fs.writeFileSync(path.join(spec.out, 'result.json'), JSON.stringify(result, null, 2));
    await browser.close();
  }
}

// Puts a series in the active viewport; with `wait`, until its image is drawn.
async function show(page, seriesInstanceUID, wait = true) {
  const displaySetInstanceUID = await page.evaluate(uid => {
    const { displaySetService, viewportGridService } = window.services;
    const displaySet = displaySetService.getActiveDisplaySets().find(ds => ds.SeriesInstanceUID === uid);
    viewportGridService.setDisplaySetsForViewport({
      viewportId: viewportGridService.getActiveViewportId(),
      displaySetInstanceUIDs: [displaySet.displaySetInstanceUID],
    });
    return displaySet.displaySetInstanceUID;
  }, seriesInstanceUID);
  if (wait) {
    await page.waitForFunction(uid => {
      const { viewportGridService } = window.services;
      const state = viewportGridService.getState();
      const viewport = state.viewports.get(viewportGridService.getActiveViewportId());
      return viewport?.displaySetInstanceUIDs?.includes(uid);
    }, displaySetInstanceUID);
    await rendered(page);
  }
  return displaySetInstanceUID;
}

// Until the active cornerstone viewport has an image and has rendered it since the last request.
async function rendered(page) {
  await page.waitForFunction(() => window.activeViewport()?.getImageData?.());
  await page.evaluate(() => new Promise(resolve => {
    const viewport = window.activeViewport();
    viewport.element.addEventListener(window.cornerstone.EVENTS.IMAGE_RENDERED, () => resolve(), { once: true });
    viewport.render();
  }));
}

// The active viewport's canvas as a data URL (what the radiologist sees there, overlays included).
async function viewportPixels(page) {
  return page.evaluate(() => {
    const viewport = window.activeViewport();
    return { imageId: viewport.getCurrentImageId(), canvas: viewport.canvas.toDataURL('image/png') };
  });
}

main().catch(error => {
  console.error(error.stack || String(error));
  process.exit(1);
});
